-- batch-orchestrator: the database roles (`orchestrator roles` runs this file; so may
-- `psql -v ON_ERROR_STOP=1 --single-transaction -f roles.sql <database URL>`).
--
-- Four NOLOGIN group roles; people and programs log in as roles that are members of them
-- (CREATE ROLE alice LOGIN PASSWORD '...' IN ROLE orchestrator_reporting):
--
--   orchestrator_migrator   owns schema orchestrator and everything in it: runs the migrations
--   orchestrator_daemon     reads and writes every table (no DDL, no TRUNCATE); `orchestrator run`
--   orchestrator_enqueue    inserts jobs and requests, reads them, their results and the views,
--                           and cancels jobs (UPDATE of jobs.cancel_requested_at only)
--   orchestrator_reporting  reads every table and view, writes nothing (psql, Metabase, Grafana)
--
-- Run it as a superuser, connected to the orchestrator's database. It is safe to run again (and
-- from two sessions at once): run it after each `orchestrator migrate`, for the enqueue role's
-- grants on tables and views a migration added. Tables and views the migrator creates later are
-- covered without it, by default privileges (for reporting and the daemon).
--
-- Existing objects in the schema that belong to another role (the schema was migrated by some
-- other login) are handed over to orchestrator_migrator, and that role (unless a superuser) is
-- made a member of orchestrator_migrator, so that it can still run the migrations.
--
-- Roles are cluster-wide; the grants are made in the current database only.

DO $$ BEGIN PERFORM pg_advisory_xact_lock(7237669627118990707); END $$;  -- one run at a time

-- The group roles; a role that exists already is left as it is.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['orchestrator_migrator', 'orchestrator_daemon',
                             'orchestrator_enqueue', 'orchestrator_reporting'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
                RAISE NOTICE 'created role %', r;
            EXCEPTION WHEN duplicate_object THEN
                NULL;  -- another session created it meanwhile
            END;
        END IF;
    END LOOP;
END $$;

-- A role that is not a superuser needs the migrator's privileges to give the schema to it and to
-- set its default privileges (PostgreSQL lets a role with CREATEROLE grant this).
DO $$
BEGIN
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
       AND NOT pg_has_role(current_user, 'orchestrator_migrator', 'USAGE') THEN
        EXECUTE format('GRANT orchestrator_migrator TO %I', current_user);
        RAISE NOTICE 'granted orchestrator_migrator to % (who runs this)', current_user;
    END IF;
END $$;

-- The database: everyone connects; the daemon's ingest creates a temporary staging table; the
-- migrator creates the schema (`CREATE SCHEMA IF NOT EXISTS` checks this privilege even when the
-- schema exists).
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT, CREATE, TEMPORARY ON DATABASE %I TO orchestrator_migrator',
                   current_database());
    EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO orchestrator_daemon',
                   current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO orchestrator_enqueue, orchestrator_reporting',
                   current_database());
END $$;

DO $$
BEGIN
    IF to_regnamespace('orchestrator') IS NULL THEN
        CREATE SCHEMA orchestrator AUTHORIZATION orchestrator_migrator;
        RAISE NOTICE 'created schema orchestrator';
    END IF;
END $$;

-- Hand over to the migrator what belongs to someone else (tables, views, sequences not owned by a
-- table, functions, types); the previous owners become members of the migrator.
DO $$
DECLARE
    migrator oid := 'orchestrator_migrator'::regrole;
    ns oid := 'orchestrator'::regnamespace;
    o record;
    previous oid[] := '{}';
    moved int := 0;
    prev oid;
BEGIN
    SELECT nspowner INTO prev FROM pg_namespace WHERE oid = ns;
    IF prev <> migrator THEN
        EXECUTE 'ALTER SCHEMA orchestrator OWNER TO orchestrator_migrator';
        previous := previous || prev;
        moved := moved + 1;
    END IF;
    FOR o IN
        SELECT c.relowner AS old_owner,
               format('ALTER %s %I.%I OWNER TO orchestrator_migrator',
                      CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                                     WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE'
                                     ELSE 'TABLE' END,
                      'orchestrator', c.relname) AS statement
          FROM pg_class c
         WHERE c.relnamespace = ns AND c.relowner <> migrator
           AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
           -- a table's own sequences (identity, serial) follow the table
           AND NOT (c.relkind = 'S' AND EXISTS (
                   SELECT FROM pg_depend d
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                      AND d.deptype IN ('a', 'i')))
        UNION ALL
        SELECT p.proowner, format('ALTER ROUTINE %s OWNER TO orchestrator_migrator',
                                  p.oid::regprocedure)
          FROM pg_proc p
         WHERE p.pronamespace = ns AND p.proowner <> migrator AND p.prokind IN ('f', 'p')
        UNION ALL
        SELECT t.typowner, format('ALTER TYPE %I.%I OWNER TO orchestrator_migrator',
                                  'orchestrator', t.typname)
          FROM pg_type t
         WHERE t.typnamespace = ns AND t.typowner <> migrator AND t.typtype IN ('e', 'd', 'r')
    LOOP
        EXECUTE o.statement;
        previous := previous || o.old_owner;
        moved := moved + 1;
    END LOOP;
    FOR prev IN
        SELECT DISTINCT a.oid FROM pg_roles a
         WHERE a.oid = ANY (previous) AND NOT a.rolsuper
           AND NOT pg_has_role(a.oid, migrator, 'USAGE')
    LOOP
        EXECUTE format('GRANT orchestrator_migrator TO %s', prev::regrole);
        RAISE NOTICE 'granted orchestrator_migrator to % (who owned the schema''s objects)',
            prev::regrole;
    END LOOP;
    IF moved > 0 THEN
        RAISE NOTICE 'handed % objects of schema orchestrator over to orchestrator_migrator',
            moved;
    END IF;
END $$;

-- Nobody but the migrator creates anything in the schema.
GRANT USAGE ON SCHEMA orchestrator
    TO orchestrator_daemon, orchestrator_enqueue, orchestrator_reporting;
REVOKE CREATE ON SCHEMA orchestrator
    FROM orchestrator_daemon, orchestrator_enqueue, orchestrator_reporting;

-- What exists now.
GRANT SELECT ON ALL TABLES IN SCHEMA orchestrator TO orchestrator_reporting;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA orchestrator TO orchestrator_daemon;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA orchestrator TO orchestrator_daemon;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA orchestrator
    TO orchestrator_daemon, orchestrator_enqueue;

-- What the migrator creates from now on (views count as tables here).
ALTER DEFAULT PRIVILEGES FOR ROLE orchestrator_migrator IN SCHEMA orchestrator
    GRANT SELECT ON TABLES TO orchestrator_reporting;
ALTER DEFAULT PRIVILEGES FOR ROLE orchestrator_migrator IN SCHEMA orchestrator
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO orchestrator_daemon;
ALTER DEFAULT PRIVILEGES FOR ROLE orchestrator_migrator IN SCHEMA orchestrator
    GRANT USAGE, SELECT ON SEQUENCES TO orchestrator_daemon;
ALTER DEFAULT PRIVILEGES FOR ROLE orchestrator_migrator IN SCHEMA orchestrator
    GRANT EXECUTE ON FUNCTIONS TO orchestrator_daemon, orchestrator_enqueue;

-- The daemon writes tables, not views, nor the schema version; the enqueue role's narrow grants
-- (before the first migration there is nothing to grant on yet).
DO $$
DECLARE
    v record;
BEGIN
    IF to_regclass('orchestrator.alembic_version') IS NOT NULL THEN
        REVOKE INSERT, UPDATE, DELETE ON orchestrator.alembic_version FROM orchestrator_daemon;
    END IF;
    FOR v IN SELECT c.relname FROM pg_class c
              WHERE c.relnamespace = 'orchestrator'::regnamespace AND c.relkind IN ('v', 'm')
    LOOP
        EXECUTE format('REVOKE INSERT, UPDATE, DELETE ON %I.%I FROM orchestrator_daemon',
                       'orchestrator', v.relname);
        EXECUTE format('GRANT SELECT ON %I.%I TO orchestrator_enqueue', 'orchestrator', v.relname);
    END LOOP;
    IF to_regclass('orchestrator.jobs') IS NULL THEN
        RAISE NOTICE 'schema orchestrator has no tables yet: run `orchestrator migrate`, '
                     'then `orchestrator roles` again';
        RETURN;
    END IF;
    GRANT SELECT, INSERT ON orchestrator.jobs, orchestrator.requests TO orchestrator_enqueue;
    -- cancelling; and the requests' insert trigger locks their job rows FOR SHARE, which
    -- PostgreSQL allows only to a role that may UPDATE some column of the table
    GRANT UPDATE (cancel_requested_at) ON orchestrator.jobs TO orchestrator_enqueue;
    GRANT SELECT ON orchestrator.results TO orchestrator_enqueue;
    EXECUTE format('GRANT USAGE ON SEQUENCE %s, %s TO orchestrator_enqueue',
                   pg_get_serial_sequence('orchestrator.jobs', 'id'),
                   pg_get_serial_sequence('orchestrator.requests', 'seq'));
END $$;
