"""`errata view`: a local web page over the published versions (data.py reads, example.py shapes one row for
showing, app.py serves, templates/ renders)."""
