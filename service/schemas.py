"""Response and request bodies (they are the OpenAPI schema of ``/docs``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from dentalmim.auth import Role


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable error code, e.g. not_dicom, truncated, too_large, unauthorized")
    message: str
    errors: list[dict[str, Any]] | None = None


class ErrorOut(BaseModel):
    detail: ErrorDetail


class Box(BaseModel):
    x1: float
    y1: float
    x2: float
    y2: float


class Finding(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_name: str = Field(alias="class", description="detector class, e.g. caries, enamel_caries")
    label: int
    score: float = Field(ge=0, le=1)
    box_px: Box = Field(description="x1, y1, x2, y2 in original pixels (x along columns)")
    box_mm: Box | None = Field(description="the box in mm (column spacing for x, row spacing for y) when known")


class ImageInfo(BaseModel):
    rows: int
    columns: int
    pixel_spacing_mm: list[float] | None = Field(description="(row, column) spacing in mm")
    modality: str


class PredictionOut(BaseModel):
    prediction_id: str
    scan_id: str = Field(description="pseudonymous id of the stored, de-identified image")
    created_at: dt.datetime
    model_version: str
    image: ImageInfo
    image_probability: float = Field(ge=0, le=1)
    image_threshold: float
    caries_present: bool
    score_threshold: float = Field(description="the model's operating threshold; `findings` are at or above it")
    score_floor: float = Field(description="`candidates` are below score_threshold and at or above this")
    findings: list[Finding]
    candidates: list[Finding]
    warnings: list[str] = Field(default_factory=list, description="what a reader must know about the model's "
                                "operating point, e.g. an image threshold chosen on too few validation images")
    timing_ms: dict[str, float] = Field(description="read (decode, de-identify, store), queue, inference, total")
    links: dict[str, str]


class PredictionBatch(BaseModel):
    predictions: list[PredictionOut]


class KeyCreate(BaseModel):
    role: Role
    name: str = Field("", max_length=100)


class KeyOut(BaseModel):
    key_id: str
    name: str
    role: str
    created_at: str
    revoked_at: str | None


class KeyCreated(KeyOut):
    key: str = Field(description="the API key; shown only once")


class AuditOut(BaseModel):
    at: dt.datetime
    key_id: str
    role: str
    action: str
    prediction_id: str | None
    scan_id: str | None
    model_version: str | None
    status: int


class ModelStatus(BaseModel):
    state: str
    version: str | None
    device: str | None
    precision: str | None
    error: str | None


#: Error responses documented on every protected route.
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "missing or invalid API key"},
    403: {"model": ErrorOut, "description": "the key's role may not do this"},
    422: {"model": ErrorOut, "description": "invalid parameters"},
}
