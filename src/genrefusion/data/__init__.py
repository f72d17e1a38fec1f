"""Data: reading movies and splitting them. The MM-IMDb folder and users' CSV / JSONL catalogs are read into one
`Dataset` of `Movie` records (a plot, a poster path, genres), every bad input named or counted; the official and
stratified splits, the label vocabulary, the one poster decoder and the torch-free transforms live here too."""
