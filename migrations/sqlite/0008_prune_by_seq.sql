-- Pruning now finds where the retained changes begin by walking the log in `seq` order
-- (times grow with `seq`: one writer stamps them), so this index only cost every write
-- one more b-tree insert.

DROP INDEX changes_by_time;
