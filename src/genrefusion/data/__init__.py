"""Data: reading movies and splitting them. The MM-IMDb folder and users" CSV / JSONL catalogs are read into one
`Dataset` of `Movie` records (a plot, a poster path, genres), every bad input named or counted; the official and
stratified splits, the label vocabulary, the one poster decoder and the torch-free transforms live here too."""
from ..lazy import lazy_exports

_EXPORTS = {
    "load_dataset": ".loader",
    "DataSpec": ".loader",
    "load_mmimdb": ".loader",
    "load_catalog": ".catalog",
    "Movie": ".records",
    "MovieDataset": ".records",
    "LoadReport": ".records",
    "DataError": ".records",
    "GENRES": ".labels",
    "stratified_split": ".splits",
    "data_summary": ".summary",
    "format_summary": ".summary",
    "decode_poster": ".posters",
    "load_poster": ".posters",
    "PosterError": ".posters",
    "download_mmimdb": ".download",
    "DownloadError": ".download",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
