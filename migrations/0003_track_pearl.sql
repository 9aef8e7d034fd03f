-- Track the PEARL tables with the seed event prefixes.
SELECT pgfeed.track('public.studies', 'study');
SELECT pgfeed.track('public.database_releases', 'database_release');
SELECT pgfeed.track('public.reporting_efforts', 'reporting_effort');
SELECT pgfeed.track('public.reporting_effort_items', 'reporting_effort_item');
SELECT pgfeed.track('public.reporting_effort_trackers', 'reporting_effort_tracker');
SELECT pgfeed.track('public.tracker_comments', 'comment');
SELECT pgfeed.track('public.packages', 'package');
SELECT pgfeed.track('public.package_items', 'package_item');
SELECT pgfeed.track('public.text_elements', 'text_element');
SELECT pgfeed.track('public.users', 'user');
