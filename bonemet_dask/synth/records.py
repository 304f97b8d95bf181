"""Side files of the synthetic tree: SkyScan/NRecon ``.log`` files and MiceMediRec records."""

from __future__ import annotations

import csv
import datetime as dt
import io

from bonemet_dask.io.skyscan_log import format_skyscan_log
from bonemet_dask.synth.config import (
    AIR_COUNTS,
    CAMERA_PIXEL_MM,
    PUBLISHED_DETECTOR,
    ROTATION_STEP_DEG,
    WINDOW_MAX_PER_MM,
    SynthConfig,
)

_START_DATE = dt.date(2023, 3, 6)
OPERATOR = "J. Müller"  # a Latin-1 character, as in real lab logs


def scan_date(config: SynthConfig, mouse_number: int, week: int) -> dt.datetime:
    """Deterministic acquisition time of a scan: one cohort per seed, weekly scans."""
    day = _START_DATE + dt.timedelta(days=7 * week + (config.seed % 97) + mouse_number // 8)
    return dt.datetime.combine(day, dt.time(9 + mouse_number % 8, 15 * (mouse_number % 4)))


def _binning(config: SynthConfig) -> int:
    factor = PUBLISHED_DETECTOR[1] / config.geometry().n_cols
    return round(factor) if abs(factor - round(factor)) < 1e-9 else 1


def acquisition_log(config: SynthConfig, mouse: str, week: int, mouse_number: int) -> bytes:
    """The SkyScan acquisition ``.log`` written beside a projection stack."""
    geo = config.geometry()
    binning = _binning(config)
    when = scan_date(config, mouse_number, week)
    return format_skyscan_log(
        {
            "System": {
                "Scanner": "Skyscan1276",
                "Instrument S/N": "16S04211",
                "Software Version": "1.7.0.5",
                "Source Type": "Hamamatsu L10101",
                "Camera Pixel Size (um)": geo.detector_pixel * 1000 / binning,
                "CameraXYRatio": 1.0,
            },
            "User": {"User Name": OPERATOR},
            "Acquisition": {
                "Data Directory": f"D:\\Results\\BoneMet\\{mouse}\\week {week}",
                "Filename Prefix": f"{mouse}_",
                "Number Of Files": geo.angles_deg.size,
                "Number Of Rows": geo.n_rows,
                "Number Of Columns": geo.n_cols,
                "Partial Width": "OFF",
                "Image crop origin X": 0,
                "Image crop origin Y": 0,
                "Camera binning": f"{binning}x{binning}",
                "Image Rotation": 0.0,
                "Source Voltage (kV)": 60,
                "Source Current (uA)": 200,
                "Image Pixel Size (um)": geo.voxel_size * 1000,
                "Object to Source (mm)": geo.source_to_object,
                "Camera to Source (mm)": geo.source_to_detector,
                "Optical Axis (line)": round(geo.centre_row),
                "Filter": "Al 0.5mm",
                "Image Format": "PNG",
                "Depth (bits)": 16,
                "Exposure (ms)": 430,
                "Rotation Step (deg)": ROTATION_STEP_DEG,
                "Frame Averaging": "OFF",
                "Use 360 Rotation": "NO",
                "Flat Field Correction": "ON",
                "Reference Intensity": round(AIR_COUNTS),
                "Rotation Direction": "CC",
                "Scanning Start Angle": 0.0,
                "Number of connected scans": 1,
                "Study Date and Time": when.strftime("%d %b %Y  %Hh:%Mm:%Ss"),
                "Scan duration": "00:04:30",
            },
        }
    )


def reconstruction_log(
    config: SynthConfig, mouse: str, week: int, first_index: int, n_files: int
) -> bytes:
    """The NRecon-style ``.log`` written beside a Recon-CT stack."""
    geo = config.geometry()
    grid = config.recon_grid()
    return format_skyscan_log(
        {
            "System": {"Scanner": "Skyscan1276", "Camera Pixel Size (um)": CAMERA_PIXEL_MM * 1000},
            "Acquisition": {
                "Number of Files": geo.angles_deg.size,
                "Object to Source (mm)": geo.source_to_object,
                "Camera to Source (mm)": geo.source_to_detector,
                "Rotation Step (deg)": ROTATION_STEP_DEG,
                "Use 360 Rotation": "NO",
            },
            "Reconstruction": {
                "Reconstruction Program": "bonemet-dask synth (voxelised analytic phantom)",
                "Dataset Origin": "Skyscan1276",
                "Dataset Prefix": f"{mouse}_",
                "Result File Type": "PNG",
                "Result File Header Length (bytes)": "Unknown: compressed",
                "Result Image Width (pixels)": grid.shape[2],
                "Result Image Height (pixels)": grid.shape[1],
                "Image Pixel Size (um)": grid.voxel_size * 1000,
                "First Section": first_index,
                "Last Section": first_index + n_files - 1,
                "Sections Count": n_files,
                "Section to Section Step": 1,
                "Filter type description": "Hamming (Alpha=0.54)",
                "Filter cutoff relative to Nyquist frequency": 100,
                "Smoothing": 0,
                "Ring Artifact Correction": 0,
                "Beam Hardening Correction (%)": 0,
                "Minimum for CS to Image Conversion": 0.0,
                "Maximum for CS to Image Conversion": WINDOW_MAX_PER_MM,
                "Postalignment": 0.0,
                "Reconstruction duration per slice (seconds)": 0.0,
            },
        }
    )


def derived_log(config: SynthConfig, source: str, n_files: int, note: str) -> bytes:
    """A DataViewer/CTAn-style ``.log`` beside a derived stack (Seg/Regist/RoI-CT)."""
    return format_skyscan_log(
        {
            "System": {"Program": "bonemet-dask synth"},
            "Reconstruction": {
                "Image Pixel Size (um)": config.voxel_size * 1000,
                "Sections Count": n_files,
                "Source Dataset": source,
                "Processing": note,
                "Minimum for CS to Image Conversion": 0.0,
                "Maximum for CS to Image Conversion": WINDOW_MAX_PER_MM,
            },
        }
    )


RECORD_COLUMNS = (
    "Experiment Date",
    "Animal ID",
    "Week",
    "Age (weeks)",
    "Sex",
    "Strain",
    "Inoculation Date",
    "Injected Limb",
    "Body Weight (g)",
    "Treatment",
    "Diagnosis",
    "Metastatic Sites",
    "Average Radiant Efficiency ([p/s]/[uW/cm2])",
    "Bone Volume RoI (mm3)",
)


def records_csv(rows: list[dict[str, object]]) -> bytes:
    """``record.csv``: one row per animal and week, columns :data:`RECORD_COLUMNS`, UTF-8, LF."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RECORD_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in RECORD_COLUMNS})
    return buffer.getvalue().encode("utf-8")
