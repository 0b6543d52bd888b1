"""homer's HTTP server: an OpenAI-compatible API over saved caches, on Starlette and uvicorn.

`homer serve` runs it. `homer_server.app` holds the routes, `homer_server.schema` the OpenAI
wire format, `homer_server.errors` the error objects, `homer_server.run` binding and serving. It
computes nothing itself: answers and ingests go through `homer.warm.WarmPool` and
`homer.service`, in worker threads.
"""
