from weightgen.registry import Registry

GENERATORS: Registry = Registry("generator method")
