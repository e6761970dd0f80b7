"""``kubetune api``: the fine-tuning part of the OpenAI REST API, so the official ``openai`` client drives kubetune.

- ``mapping``: pure functions, request -> FineTuneJob manifest, FineTuneJob -> job object, events, pages;
- ``files``: uploads, checked with the trainer's data rules, in a folder or an S3 bucket;
- ``local_backend``: jobs run on this machine by ``kubetune run`` subprocesses;
- ``cluster_backend``: FineTuneJobs created with the caller's own Kubernetes identity;
- ``server``: the FastAPI app; ``main``: the command line.

See docs/api-openai.md.
"""
