"""Serve: an HTTP search and classify service over a store, with a web page.

Owns: the settings (``options.py``), the served stores and their reloads
(``state.py``), what the routes compute (``answers.py``), the files a request may see
(``media.py``: only those the tables name, inside the data root), uploads and the
decompression-bomb guard (``uploads.py``), the request guards (``guards.py``: body
limit, in-flight limit, bearer token, Host allow-list, security headers), JSON errors
(``errors.py``), the FastAPI application and its routes (``app.py``, ``routes.py``),
running it with uvicorn (``server.py``; the connection guard, a header timeout and an
idle-first connection cap, in ``connections.py``) and the page's own files
(``static/``).
May import: ``clipindex.errors``, ``clipindex.store``, ``clipindex.encode`` (query
images and thumbnails go through its decoder), ``clipindex.search``,
``clipindex.classifiers``. Never bench, report or the CLI. FastAPI, Starlette and
uvicorn come with the ``serve`` extra (``pip install 'clipindex[serve]'``).
"""

from clipindex.serve.app import create_app
from clipindex.serve.options import ServeOptions
from clipindex.serve.server import exposure_warning, run_server
from clipindex.serve.state import ServedStore, Snapshot

__all__ = ["ServeOptions", "ServedStore", "Snapshot", "create_app", "exposure_warning",
           "run_server"]
