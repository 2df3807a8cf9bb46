{
  "format": "ltr-ranker-signature/1",
  "algorithm": "ed25519",
  "signed_file": "ranker.json",
  "key_id": "b066ff7dd32c9e66",
  "signature": "KlaqNFDam1J86QINU44PEaQdL/PN1KfhAVxPg4OPkANZNHIwXJfuRfW2BZhXihKZnuPdDgckhpx5u7lviqdoDg=="
}
