"""Data sources: transaction generators, CSV loaders and graph builders; CT generators, DICOM reading, de-identification, PACS."""
