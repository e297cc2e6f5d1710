-- zsds: the PostgreSQL roles and database of the operations database.
--
-- Run once per server, as a PostgreSQL superuser (re-running changes nothing but the
-- passwords given), then create the tables with `zsds db upgrade` as the owner role:
--
--   sudo -u postgres psql -v ON_ERROR_STOP=1 \
--        -v owner_password="$(cat /etc/zsds/owner.pw)" -v reader_password=... \
--        -f deploy/postgres/create-db.sql
--   ZSDS_CONFIG=/etc/zsds/zsds.yaml zsds db upgrade
--
-- psql variables (all optional):
--   db               database name                                   (default zsds)
--   owner            role that owns the database; the pipeline, `zsds watch`, `zsds serve`
--                    and `zsds db upgrade` connect as it              (default zsds)
--   reader           read-only role for analysts and notebooks         (default zsds_reader)
--   owner_password, reader_password
--                    set (or reset) the role's password; omit to manage passwords
--                    yourself (\password in psql) or to use peer/certificate authentication
--
-- The database is UTF8 from template0. zsds keeps its tables in the schema `public`, which
-- in PostgreSQL >= 15 belongs to the database owner; the reader gets SELECT on every table
-- the owner creates now or later (default privileges), and nothing else.

\if :{?db}
\else
  \set db zsds
\endif
\if :{?owner}
\else
  \set owner zsds
\endif
\if :{?reader}
\else
  \set reader zsds_reader
\endif

-- roles ------------------------------------------------------------------------------------
SELECT format('CREATE ROLE %I LOGIN', :'owner')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'owner') \gexec
SELECT format('CREATE ROLE %I LOGIN', :'reader')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'reader') \gexec
\if :{?owner_password}
  SELECT format('ALTER ROLE %I PASSWORD %L', :'owner', :'owner_password') \gexec
\endif
\if :{?reader_password}
  SELECT format('ALTER ROLE %I PASSWORD %L', :'reader', :'reader_password') \gexec
\endif

-- database ---------------------------------------------------------------------------------
SELECT format('CREATE DATABASE %I OWNER %I ENCODING %L TEMPLATE template0', :'db', :'owner', 'UTF8')
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'db') \gexec
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"db" TO :"owner";
GRANT CONNECT ON DATABASE :"db" TO :"reader";

-- privileges inside the database ----------------------------------------------------------
\connect :"db"
ALTER SCHEMA public OWNER TO :"owner";
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO :"reader";
GRANT SELECT ON ALL TABLES IN SCHEMA public TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA public GRANT SELECT ON TABLES TO :"reader";
