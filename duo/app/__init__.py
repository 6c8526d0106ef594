"""The app's side: the recording proxy, the review page, the student served.

The recording proxy and its traffic files (record, traffic), the review page (review/), and the student
served in the service's place (serve)."""
