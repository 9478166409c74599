"""The HTTP API (docs/api.md).

Entry points: `yunhan.api.app.create_app(store, admin_token=...)` builds the FastAPI app
(tests drive it with TestClient); `yunhan.api.server.serve(state_dir, host, port,
admin_token)` runs the API and the controller in one process until SIGTERM/SIGINT.
They are not imported here so that `import yunhan.api` stays cheap.
"""
