-- A change row no longer copies the document it wrote (`doc` stays NULL from here on):
-- that version is the `old` of the path's next change or, until one comes, the row in
-- `documents`. Each version is then written to the log once instead of twice.
--
-- This index finds a path's next change. A create is never one (it follows a delete or
-- nothing, and a delete needs no document after it), so creates stay out of the index
-- and pay for no entry.
CREATE INDEX changes_next_by_path ON changes (path, seq) WHERE kind <> 'create';
