"""Request and response bodies of the HTTP API, one module per router (domain inputs live
with their services); `common` holds what several routers share."""
