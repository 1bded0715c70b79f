from twisted.application.service import ServiceMaker

glance = ServiceMaker(
    "glance-tx API server",
    "glance_tx.tap",
    "OpenStack Images API server with streamed image data",
    "glance",
)

glance_registry = ServiceMaker(
    "glance-tx registry server",
    "glance_tx.registry.tap",
    "Registry API server: image records shared by several API nodes",
    "glance-registry",
)

glance_scrubber = ServiceMaker(
    "glance-tx scrubber",
    "glance_tx.scrubber_tap",
    "Delayed delete's scrubber: removes the data of images pending delete",
    "glance-scrubber",
)
