"""The API's documentation pages, `/docs` (Swagger UI) and `/redoc` (ReDoc), served with their
scripts and styles from the service itself: no CDN, so they work on a machine without internet.

The assets are the files of the `fastapi-offline` package (MIT; it bundles Swagger UI, Apache
2.0, and ReDoc, MIT), served by name from a fixed list under /docs/assets/. Like
/openapi.json, these routes need no API key.
"""

from importlib.resources import files
from pathlib import Path
from typing import Final

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

DOCS_PATH: Final = "/docs"
REDOC_PATH: Final = "/redoc"
ASSETS_PATH: Final = "/docs/assets"
# name -> content type; the files themselves lie in fastapi_offline/static.
ASSETS: Final = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}

# Where the installed `fastapi-offline` keeps its copies (a missing install fails here, at import).
ASSETS_FOLDER: Final = Path(str(files("fastapi_offline") / "static"))

docs_router = APIRouter(include_in_schema=False)


def _urls(request: Request) -> tuple[str, str]:
    """The schema's and the assets' URLs, behind the proxy's root path if there is one."""
    root = request.scope.get("root_path", "").rstrip("/")
    return f"{root}{request.app.openapi_url}", f"{root}{ASSETS_PATH}"


@docs_router.get(DOCS_PATH)
async def swagger_ui(request: Request) -> HTMLResponse:
    openapi_url, assets = _urls(request)
    return get_swagger_ui_html(
        openapi_url=openapi_url,
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon.png",
        # No online validator (validator.swagger.io): nothing leaves the machine.
        swagger_ui_parameters={"validatorUrl": None, **(request.app.swagger_ui_parameters or {})},
    )


@docs_router.get(REDOC_PATH)
async def redoc(request: Request) -> HTMLResponse:
    openapi_url, assets = _urls(request)
    return get_redoc_html(
        openapi_url=openapi_url,
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{assets}/redoc.standalone.js",
        redoc_favicon_url=f"{assets}/favicon.png",
        with_google_fonts=False,
    )


@docs_router.get(ASSETS_PATH + "/{name}")
async def asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(404, "Not Found")
    # They change only with the installed package: a day in the browser's cache, not 2.7 MB again
    # for every page view.
    return FileResponse(
        ASSETS_FOLDER / name,
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=86400"},
    )
