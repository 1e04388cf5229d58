-- `documents` had two indexes over the path: `(collection, path)`, its unique key, and
-- `(coll_id, path)` for collection groups. A collection's documents are a path range
-- inside its group (`coll_id` is the collection's last segment), so one index serves
-- both, and each write places one index entry instead of two (a document with a
-- client-made, random id landed on a random page of each).
CREATE UNIQUE INDEX documents_key ON documents (coll_id, path);
DROP INDEX documents_by_collection;
DROP INDEX documents_by_group;
