"""The web dashboard: one static page and its script, served by the gateway (no build step,
no CDN: the charting library, uPlot, is vendored with its licence). The page holds no data of
its own: everything it shows comes from the API with the viewer's bearer token, so every role
and ownership check is the API's."""
