"""Dimension names shared by every package.

Arrays in fourcast are labelled with these names and nothing else; code selects by coordinate
label, never by integer position. Latitude runs 90 → −90 and longitude 0 → 360 (ERA5 order).
"""

TIME = "time"
INIT_TIME = "init_time"
LEAD_TIME = "lead_time"
MEMBER = "member"
CHANNEL = "channel"
LAT = "lat"
LON = "lon"

#: Dimension order of the training store's ``data`` array.
STORE_DIMS = (TIME, CHANNEL, LAT, LON)
#: Dimension order of one field of a forecast archive variable.
ARCHIVE_DIMS = (INIT_TIME, LEAD_TIME, MEMBER, LAT, LON)
