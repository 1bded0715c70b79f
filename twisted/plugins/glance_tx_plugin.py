from twisted.application.service import ServiceMaker

glance = ServiceMaker(
    "glance-tx API server",
    "glance_tx.tap",
    "OpenStack Images API server with streamed image data",
    "glance",
)
