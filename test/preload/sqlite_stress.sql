-- 100k rows through a recursive CTE, an index, aggregates and a join.
CREATE TABLE t(id INTEGER PRIMARY KEY, grp INTEGER, name TEXT, val REAL, blob BLOB);
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000)
INSERT INTO t(id, grp, name, val, blob)
  SELECT i, i % 97, 'name-' || i || '-' || substr('abcdefghijklmnopqrstuvwxyz', 1 + i % 26),
         (i * 7919) % 10007 / 7.0, zeroblob(i % 200)
  FROM n;
COMMIT;
CREATE INDEX t_grp ON t(grp, val);
SELECT count(*), sum(id), printf('%.3f', avg(val)), max(length(name)), sum(length(blob)) FROM t;
SELECT grp, count(*), printf('%.3f', sum(val)), min(name) FROM t GROUP BY grp ORDER BY grp LIMIT 5;
SELECT count(DISTINCT substr(name, -1)), length(group_concat(name, ',')) FROM t WHERE grp < 10;
CREATE TABLE g AS SELECT grp, count(*) AS c FROM t GROUP BY grp;
SELECT sum(g.c), count(*) FROM t JOIN g USING (grp) WHERE t.val > 700;
UPDATE t SET name = upper(name) WHERE id % 3 = 0;
DELETE FROM t WHERE id % 5 = 0;
SELECT count(*), sum(CASE WHEN name GLOB 'NAME*' THEN 1 ELSE 0 END) FROM t;
SELECT name FROM t ORDER BY val DESC, id LIMIT 3;
PRAGMA integrity_check;
