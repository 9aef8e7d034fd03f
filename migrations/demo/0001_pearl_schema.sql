-- The PEARL clinical-reporting schema, as the PEARL project's own SQLAlchemy
-- models and Alembic migrations create it: studies -> database releases ->
-- reporting efforts -> items -> trackers -> comments, plus users, packages,
-- package items and text elements. Same table and column names, types, enum
-- types (labels as PEARL stores them), foreign keys and ON DELETE rules, and
-- naive `timestamp` columns holding UTC, as PEARL's app fills them.
--
-- Applied only to the embedded cluster's database or on request
-- (`pgfeed migrate --demo-schema`), and never over existing tables: a real
-- PEARL database already has all of this. One addition: where PEARL's app fills
-- a NOT NULL column itself (timestamps, statuses, flags, counts), the column
-- has a database default here, and `updated_at` follows updates (unless the
-- writer sets it), so a plain `INSERT INTO studies (study_label) VALUES (...)`
-- from psql works.

CREATE TYPE public.userrole AS ENUM ('ADMIN', 'EDITOR', 'VIEWER');
CREATE TYPE public.authprovider AS ENUM ('local', 'google', 'microsoft', 'github', 'okta', 'custom');
CREATE TYPE public.itemtype AS ENUM ('TLF', 'Dataset');
CREATE TYPE public.textelementtype AS ENUM ('title', 'footnote', 'population_set', 'acronyms_set', 'ich_category');

CREATE TABLE public.users (
    id                   serial PRIMARY KEY,
    username             varchar NOT NULL,
    email                varchar,
    role                 public.userrole NOT NULL DEFAULT 'VIEWER',
    department           varchar(50),
    password_hash        varchar,
    auth_provider        public.authprovider NOT NULL DEFAULT 'local',
    auth_provider_id     varchar,
    is_active            boolean NOT NULL DEFAULT true,
    last_login_at        timestamp,
    reset_token          varchar,
    reset_token_expires  timestamp,
    created_at           timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    updated_at           timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
);
CREATE UNIQUE INDEX ix_users_username ON public.users (username);
CREATE UNIQUE INDEX ix_users_email ON public.users (email);
CREATE INDEX ix_users_id ON public.users (id);

CREATE TABLE public.studies (
    id           serial PRIMARY KEY,
    study_label  varchar(255) NOT NULL,
    created_at   timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    updated_at   timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    CONSTRAINT uq_studies_study_label UNIQUE (study_label)
);
CREATE INDEX ix_studies_study_label ON public.studies (study_label);

CREATE TABLE public.database_releases (
    id                      serial PRIMARY KEY,
    study_id                integer NOT NULL REFERENCES public.studies(id) ON DELETE CASCADE,
    database_release_label  varchar(255) NOT NULL,
    database_release_date   varchar(50),
    created_at              timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    updated_at              timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    CONSTRAINT uq_study_database_release_label UNIQUE (study_id, database_release_label)
);
CREATE INDEX ix_database_releases_study_id ON public.database_releases (study_id);

CREATE TABLE public.reporting_efforts (
    id                      serial PRIMARY KEY,
    study_id                integer NOT NULL REFERENCES public.studies(id) ON DELETE CASCADE,
    database_release_id     integer NOT NULL REFERENCES public.database_releases(id) ON DELETE CASCADE,
    database_release_label  varchar(255) NOT NULL,
    created_at              timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    updated_at              timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    CONSTRAINT uq_database_release_reporting_effort_label UNIQUE (database_release_id, database_release_label)
);
CREATE INDEX ix_reporting_efforts_study_id ON public.reporting_efforts (study_id);
CREATE INDEX ix_reporting_efforts_database_release_id ON public.reporting_efforts (database_release_id);

CREATE TABLE public.reporting_effort_items (
    id                   serial PRIMARY KEY,
    reporting_effort_id  integer NOT NULL REFERENCES public.reporting_efforts(id) ON DELETE CASCADE,
    source_type          varchar(50),
    source_id            integer,
    source_item_id       integer,
    item_type            public.itemtype NOT NULL,
    item_subtype         varchar(50) NOT NULL,
    item_code            varchar(255) NOT NULL,
    is_active            boolean NOT NULL DEFAULT true,
    created_at           timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    updated_at           timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    CONSTRAINT uq_reporting_effort_item_unique UNIQUE (reporting_effort_id, item_type, item_subtype, item_code)
);
CREATE INDEX ix_reporting_effort_items_item_type ON public.reporting_effort_items (item_type);
CREATE INDEX ix_reporting_effort_items_reporting_effort_id ON public.reporting_effort_items (reporting_effort_id);

CREATE TABLE public.reporting_effort_item_tracker (
    id                        serial PRIMARY KEY,
    reporting_effort_item_id  integer NOT NULL
                              REFERENCES public.reporting_effort_items(id) ON DELETE CASCADE,
    production_programmer_id  integer REFERENCES public.users(id) ON DELETE SET NULL,
    production_status         varchar(50) NOT NULL DEFAULT 'not_started',
    due_date                  date,
    priority                  varchar(50) NOT NULL DEFAULT 'medium',
    qc_level                  varchar(50),
    qc_programmer_id          integer REFERENCES public.users(id) ON DELETE SET NULL,
    qc_status                 varchar(50) NOT NULL DEFAULT 'not_started',
    qc_completion_date        date,
    in_production_flag        boolean NOT NULL DEFAULT false,
    unresolved_comment_count  integer NOT NULL DEFAULT 0,
    created_at                timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    updated_at                timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    CONSTRAINT uq_tracker_item UNIQUE (reporting_effort_item_id)
);
CREATE UNIQUE INDEX ix_reporting_effort_item_tracker_reporting_effort_item_id
    ON public.reporting_effort_item_tracker (reporting_effort_item_id);
CREATE INDEX ix_reporting_effort_item_tracker_production_programmer_id
    ON public.reporting_effort_item_tracker (production_programmer_id);
CREATE INDEX ix_reporting_effort_item_tracker_qc_programmer_id
    ON public.reporting_effort_item_tracker (qc_programmer_id);
CREATE INDEX ix_reporting_effort_item_tracker_unresolved_comment_count
    ON public.reporting_effort_item_tracker (unresolved_comment_count);

-- PEARL's comments keep their own time zone-aware timestamps.
CREATE TABLE public.tracker_comments (
    id                   serial PRIMARY KEY,
    tracker_id           integer NOT NULL REFERENCES public.reporting_effort_item_tracker(id) ON DELETE CASCADE,
    user_id              integer NOT NULL REFERENCES public.users(id) ON DELETE RESTRICT,
    parent_comment_id    integer REFERENCES public.tracker_comments(id) ON DELETE CASCADE,
    comment_text         text NOT NULL,
    comment_type         varchar(20) NOT NULL DEFAULT 'programming',
    is_resolved          boolean NOT NULL DEFAULT false,
    resolved_by_user_id  integer REFERENCES public.users(id) ON DELETE SET NULL,
    resolved_at          timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ix_tracker_comments_tracker_id ON public.tracker_comments (tracker_id);
CREATE INDEX ix_tracker_comments_user_id ON public.tracker_comments (user_id);
CREATE INDEX ix_tracker_comments_parent_comment_id ON public.tracker_comments (parent_comment_id);
CREATE INDEX ix_tracker_comments_is_resolved ON public.tracker_comments (is_resolved);
CREATE INDEX ix_tracker_comments_created_at ON public.tracker_comments (created_at);
CREATE INDEX ix_tracker_comments_comment_type ON public.tracker_comments (comment_type);

CREATE TABLE public.packages (
    id            serial PRIMARY KEY,
    package_name  varchar(255) NOT NULL,
    created_at    timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    updated_at    timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
);
CREATE INDEX ix_packages_package_name ON public.packages (package_name);

CREATE TABLE public.package_items (
    id            serial PRIMARY KEY,
    package_id    integer NOT NULL REFERENCES public.packages(id) ON DELETE CASCADE,
    item_type     public.itemtype NOT NULL,
    item_subtype  varchar(50) NOT NULL,
    item_code     varchar(255) NOT NULL,
    created_at    timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    updated_at    timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    CONSTRAINT uq_package_item_unique UNIQUE (package_id, item_type, item_subtype, item_code)
);
CREATE INDEX ix_package_items_item_type ON public.package_items (item_type);
CREATE INDEX ix_package_items_package_id ON public.package_items (package_id);

CREATE TABLE public.text_elements (
    id          serial PRIMARY KEY,
    type        public.textelementtype NOT NULL,
    label       text NOT NULL,
    content     text,
    created_at  timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc'),
    updated_at  timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
);
CREATE INDEX ix_text_elements_type ON public.text_elements (type);

-- PEARL's app sets updated_at on every update (SQLAlchemy onupdate); psql does
-- not, so the demo does it for writers that leave it unchanged.
CREATE FUNCTION public.pearl_demo_touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.updated_at IS DISTINCT FROM OLD.updated_at THEN
        RETURN NEW;
    ELSIF pg_typeof(NEW.updated_at) = 'timestamp with time zone'::regtype THEN
        NEW.updated_at := now();
    ELSE
        NEW.updated_at := now() AT TIME ZONE 'utc';
    END IF;
    RETURN NEW;
END;
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['users', 'studies', 'database_releases', 'reporting_efforts',
                             'reporting_effort_items', 'reporting_effort_item_tracker',
                             'tracker_comments', 'packages', 'package_items', 'text_elements']
    LOOP
        EXECUTE format('CREATE TRIGGER pearl_demo_touch_updated_at BEFORE UPDATE ON public.%I '
                       'FOR EACH ROW EXECUTE FUNCTION public.pearl_demo_touch_updated_at()', t);
    END LOOP;
END;
$$;
