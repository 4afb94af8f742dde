"""``magihuman serve``: a REST API with a persistent job queue, worker processes and a web UI.

Modules, in data-flow order: :mod:`~magihuman.serve.config` (settings), :mod:`~magihuman.serve.schemas`
(the API's request and response models), :mod:`~magihuman.serve.uploads` (size-limited uploads checked by
decoding), :mod:`~magihuman.serve.store` (the SQLAlchemy job store: queue, leases, retries),
:mod:`~magihuman.serve.jobs`
(creating and reading jobs: the one path shared by the API and the UI), :mod:`~magihuman.serve.app` (the
FastAPI app), :mod:`~magihuman.serve.ui` (the Gradio page), :mod:`~magihuman.serve.metrics` (Prometheus
text), :mod:`~magihuman.serve.worker` (a process holding one loaded pipeline), :mod:`~magihuman.serve.supervisor`
(starts the API and the workers, restarts workers), :mod:`~magihuman.serve.cli` (the command).

Importing this package imports nothing heavy; see docs/serving.md.
"""
