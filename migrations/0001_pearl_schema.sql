-- PEARL clinical-reporting schema: studies -> database releases -> reporting
-- efforts -> items -> trackers -> comments, plus users, packages, package items
-- and text elements. A child that cannot outlive its parent is deleted with it
-- (ON DELETE CASCADE); references to people are cleared instead (SET NULL).

CREATE FUNCTION public.touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TABLE public.users (
    id          serial PRIMARY KEY,
    username    text NOT NULL UNIQUE,
    email       text,
    role        text NOT NULL DEFAULT 'VIEWER',
    department  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.studies (
    id           serial PRIMARY KEY,
    study_label  text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.database_releases (
    id                      serial PRIMARY KEY,
    study_id                integer NOT NULL REFERENCES public.studies(id) ON DELETE CASCADE,
    database_release_label  text NOT NULL,
    database_release_date   date,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    UNIQUE (study_id, database_release_label)
);

CREATE TABLE public.reporting_efforts (
    id                      serial PRIMARY KEY,
    study_id                integer NOT NULL REFERENCES public.studies(id) ON DELETE CASCADE,
    database_release_id     integer NOT NULL REFERENCES public.database_releases(id) ON DELETE CASCADE,
    database_release_label  text NOT NULL,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.reporting_effort_items (
    id                   serial PRIMARY KEY,
    reporting_effort_id  integer NOT NULL REFERENCES public.reporting_efforts(id) ON DELETE CASCADE,
    source_type          text,
    source_id            integer,
    item_type            text NOT NULL,          -- TLF or Dataset
    item_subtype         text NOT NULL,          -- Table, Listing, Figure, SDTM, ADaM
    item_code            text NOT NULL,
    is_active            boolean NOT NULL DEFAULT true,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (reporting_effort_id, item_type, item_subtype, item_code)
);

CREATE TABLE public.reporting_effort_trackers (
    id                        serial PRIMARY KEY,
    reporting_effort_item_id  integer NOT NULL UNIQUE
                              REFERENCES public.reporting_effort_items(id) ON DELETE CASCADE,
    production_programmer_id  integer REFERENCES public.users(id) ON DELETE SET NULL,
    qc_programmer_id          integer REFERENCES public.users(id) ON DELETE SET NULL,
    production_status         text NOT NULL DEFAULT 'not_started',
    qc_status                 text NOT NULL DEFAULT 'not_started',
    priority                  text NOT NULL DEFAULT 'medium',
    qc_level                  text,
    due_date                  date,
    qc_completion_date        date,
    in_production_flag        boolean NOT NULL DEFAULT false,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.tracker_comments (
    id                   serial PRIMARY KEY,
    tracker_id           integer NOT NULL REFERENCES public.reporting_effort_trackers(id) ON DELETE CASCADE,
    user_id              integer REFERENCES public.users(id) ON DELETE SET NULL,
    parent_comment_id    integer REFERENCES public.tracker_comments(id) ON DELETE CASCADE,
    comment_text         text NOT NULL,
    comment_type         text NOT NULL DEFAULT 'programming',   -- programming or biostat
    is_resolved          boolean NOT NULL DEFAULT false,
    resolved_by_user_id  integer REFERENCES public.users(id) ON DELETE SET NULL,
    resolved_at          timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tracker_comments_tracker_idx ON public.tracker_comments (tracker_id);

CREATE TABLE public.packages (
    id                 serial PRIMARY KEY,
    package_name       text NOT NULL UNIQUE,
    study_indication   text,
    therapeutic_area   text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.package_items (
    id            serial PRIMARY KEY,
    package_id    integer NOT NULL REFERENCES public.packages(id) ON DELETE CASCADE,
    study_id      integer REFERENCES public.studies(id) ON DELETE CASCADE,
    item_type     text NOT NULL,
    item_subtype  text NOT NULL,
    item_code     text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.text_elements (
    id          serial PRIMARY KEY,
    type        text NOT NULL,      -- title, footnote, population_set, acronyms_set, ich_category
    label       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['users', 'studies', 'database_releases', 'reporting_efforts',
                             'reporting_effort_items', 'reporting_effort_trackers',
                             'tracker_comments', 'packages', 'package_items', 'text_elements']
    LOOP
        EXECUTE format('CREATE TRIGGER touch_updated_at BEFORE UPDATE ON public.%I '
                       'FOR EACH ROW EXECUTE FUNCTION public.touch_updated_at()', t);
    END LOOP;
END;
$$;
