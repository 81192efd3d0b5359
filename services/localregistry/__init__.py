"""A local schema registry (Apicurio Registry, from Maven Central) for registry framing."""
