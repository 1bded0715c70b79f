"""
Glance's metadata definitions (metadefs): the catalogue of properties a
cloud's images, flavors and volumes may carry, served under
C{/v2/metadefs}.

  - L{glance_tx.metadefs.model}: the records (namespaces, their objects,
    properties and tags, resource types and associations);
  - L{glance_tx.metadefs.interface}: L{IMetadefRegistry}, where they are kept;
  - L{glance_tx.metadefs.schemas}: the JSON schemas of
    C{/v2/schemas/metadefs/...} and the checks of request bodies;
  - L{glance_tx.metadefs.views}: records to and from Glance's documents;
  - L{glance_tx.metadefs.api}: the Klein app, mounted under C{/v2};
  - L{glance_tx.metadefs.load}: loading a directory of definition files
    (Glance's C{load_metadefs} format), and its command.
"""
