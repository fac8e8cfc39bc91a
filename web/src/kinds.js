// The table of bundle kinds this package runs: a manifest's kind -> the tokenizer class that
// runs it (the browser side of vqedge.runtime.kind, whose `browser` field names these classes).
// A new kind is its class (a TokenizerBase subclass in its own module) and one registerKind call.
// Kinds registered at run time are known to this thread: load them with { worker: false }, or
// register them in the worker as well.

const KINDS = new Map();

/** Run bundles of `kind` with `cls` (replacing an entry of the same name); returns `cls`. */
export function registerKind(kind, cls) {
  KINDS.set(kind, cls);
  return cls;
}

/** The class that runs bundles of `kind`, or undefined. */
export function kindClass(kind) {
  return KINDS.get(kind);
}

/** The kinds this package runs now. */
export function kindNames() {
  return [...KINDS.keys()];
}
