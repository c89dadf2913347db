"""Volumes in and out: NIfTI and DICOM reading and writing, resampling, normalisation, registration, and
the dataset sources (subjects tables, IXI, BraTS, folders, the embedded demo). Nothing here knows a
fusion method."""
