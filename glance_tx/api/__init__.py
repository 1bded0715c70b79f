"""The HTTP face of glance-tx: Klein apps, the streaming request, the site."""
