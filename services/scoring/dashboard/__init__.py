"""The CSM dashboard: server-rendered pages (Jinja2) with SVG charts, served by the
scoring service at ``/``. Works without JavaScript and offline (nothing from a CDN)."""
