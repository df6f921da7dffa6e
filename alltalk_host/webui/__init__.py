"""The web UI: static HTML, CSS and JavaScript modules (``static/``), served at ``/ui/`` by
``routes``. The page is one more client of the JSON API; there are no HTML routes besides it."""
