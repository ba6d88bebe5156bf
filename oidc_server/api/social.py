"""/api/v1 social endpoints."""

from __future__ import annotations

from flask_smorest import Blueprint

blp = Blueprint("social", __name__, url_prefix="/api/v1", description="social")
