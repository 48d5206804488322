"""Reports from stored results only: tables (markdown/CSV), plotly figures, offline HTML pages."""
