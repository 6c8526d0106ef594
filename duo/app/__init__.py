"""The application's side of the migration: the recording proxy and its traffic files, the review page, and the student served in the service's place."""
