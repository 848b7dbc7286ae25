// ReDoc over this gateway's schema, with the system fonts (no font CDN).
Redoc.init("/openapi.json", {}, document.getElementById("redoc"));
