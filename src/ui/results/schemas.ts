/**
 * The JSON Schema (draft-07) of every command's `--json` output, and of the error object any
 * command prints under --json. They are the contract with scripts (README "JSON output"): the
 * build writes them to schemas/<command>.schema.json, which ships in the package, and a test
 * runs every command and validates its stdout against them with ajv. Every object is closed
 * (additionalProperties: false), so an internal field that leaks into the output fails that
 * test. Optional fields are absent, never null. Change one only together with results.ts;
 * remove or retype a field only as a breaking change.
 */
export type JsonSchema = {[key: string]: unknown}

const string = {type: 'string'}
const nonEmpty = {type: 'string', minLength: 1}
const count = {type: 'integer', minimum: 0}
const boolean = {type: 'boolean'}
const number = {type: 'number'}
/** ISO 8601 UTC, as Date.toISOString writes it. */
const time = {type: 'string', pattern: '^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}(\\.\\d+)?Z$'}
const volumeKind = {enum: ['file', 'block', 'nbd']}
const cloneState = {enum: ['synchronizing', 'synchronized', 'fractured', 'out-of-sync', 'restoring', 'reverse-syncing']}

/** A closed object: `required` must be there, `optional` may be, nothing else may. */
function object(required: Record<string, JsonSchema>, optional: Record<string, JsonSchema> = {}): JsonSchema {
  return {type: 'object', additionalProperties: false, required: Object.keys(required), properties: {...required, ...optional}}
}
function array(items: JsonSchema): JsonSchema {
  return {type: 'array', items}
}

const damagedGroup = object({name: nonEmpty, damaged: object({file: nonEmpty, reason: string, code: nonEmpty}, {fix: string})})

const syncResult = object(
  {
    clone: nonEmpty,
    completed: boolean,
    alreadySynchronized: boolean,
    compared: boolean,
    totalExtents: count,
    copiedBytes: count,
    skippedBytes: count,
    collisions: count,
    elapsedMs: {type: 'number', minimum: 0},
  },
  {operationId: nonEmpty},
)

const cloneResult = object(
  {name: nonEmpty, path: nonEmpty, kind: volumeKind, size: count, state: cloneState, createdAt: time, trusted: boolean},
  {stateReason: string, lastSyncAt: time, lastFractureAt: time, untrustedReason: {enum: ['source-changed', 'clone-changed']}},
)

const progress = object(
  {operation: {enum: ['sync', 'restore', 'verify']}, clone: nonEmpty, totalBytes: count, doneBytes: count, remainingExtents: count},
  {codCopies: count, paused: boolean, rate: {type: 'number', exclusiveMinimum: 0}},
)

const groupStatus = object(
  {
    name: nonEmpty,
    source: object({path: nonEmpty, size: count}),
    extentSize: count,
    extentCount: count,
    createdAt: time,
    clones: array(
      object(
        {name: nonEmpty, path: nonEmpty, state: cloneState, dirtyExtents: count, dirtyBytes: count, inSyncPercent: {type: 'number', minimum: 0, maximum: 100}, trusted: boolean},
        {stateReason: string, damagedMapPages: array(count), mapDamage: string, lastSyncAt: time, lastFractureAt: time, unavailable: string},
      ),
    ),
  },
  {
    operation: object(
      {
        id: nonEmpty,
        kind: {enum: ['sync', 'restore']},
        clone: nonEmpty,
        startedAt: time,
        state: {enum: ['running', 'interrupted']},
        pid: count,
        remainingExtents: count,
        percentDone: {type: 'number', minimum: 0, maximum: 100},
      },
      {protected: boolean, totalExtents: count, hostWrittenExtents: count, paused: boolean, rate: {type: 'number', exclusiveMinimum: 0}},
    ),
    lockedBy: object({pid: count, command: string, startedAt: string}),
    server: object({pid: count, connections: count, payloadBytes: count, memoryHandBacks: count}, {nbdSocket: nonEmpty, tcpPort: count, operation: progress}),
  },
)

const job = object(
  {
    group: nonEmpty,
    kind: {enum: ['sync', 'restore']},
    clone: nonEmpty,
    runner: {enum: ['serve', 'foreground']},
    pid: count,
    state: {enum: ['running', 'paused', 'cancelled']},
    totalBytes: count,
    doneBytes: count,
    remainingExtents: count,
    percentDone: {type: 'number', minimum: 0, maximum: 100},
  },
  {rate: {type: 'number', exclusiveMinimum: 0}, codCopies: count},
)

/** By command id (oclif's, with ":"), the schema of what `--json` prints on success. */
export const resultSchemas: Record<string, JsonSchema> = {
  'group:create': object({name: nonEmpty, extentSize: count, createdAt: time, source: object({path: nonEmpty, kind: volumeKind, size: count})}),
  'group:list': array({oneOf: [object({name: nonEmpty, source: nonEmpty, size: count, clones: count}, {operation: string}), damagedGroup]}),
  'group:destroy': object({group: nonEmpty, clones: count}),
  'clone:add': object({clone: cloneResult}, {sync: syncResult}),
  'clone:sync': syncResult,
  'clone:fracture': array(object({clone: nonEmpty, state: cloneState, alreadyFractured: boolean}, {fracturedAt: time})),
  'clone:remove': object({clone: nonEmpty, path: nonEmpty}),
  status: array({oneOf: [groupStatus, damagedGroup]}),
  'job:list': array(job),
  'job:pause': job,
  'job:resume': job,
  'job:rate': job,
  'job:cancel': job,
  restore: object({
    operationId: nonEmpty,
    clone: nonEmpty,
    protected: boolean,
    resumed: boolean,
    completed: boolean,
    compared: boolean,
    totalExtents: count,
    copiedBytes: count,
    skippedBytes: count,
    codCopies: count,
    codBytes: count,
    collisions: count,
    hostWrittenExtents: count,
  }),
  verify: object({group: nonEmpty, clone: nonEmpty, extents: count, violations: array(count), markedEqual: count, markedDifferent: count, repaired: boolean}),
  drill: object(
    {
      kind: {enum: ['scratch', 'group']},
      kept: boolean,
      content: {enum: ['ext4', 'random', 'clone']},
      sizeBytes: count,
      restoreMs: number,
      throughputMBps: number,
      codCopies: count,
      bytesCopied: count,
      hostReads: count,
      hostWrites: count,
      checks: array(object({name: nonEmpty, ok: boolean, detail: string})),
      ok: boolean,
    },
    {dir: nonEmpty, timeToFirstHostIoMs: number},
  ),
}

/**
 * What every command prints on stdout under --json when it fails; `status` is the exit status.
 * `result` is there only when the failure has a result of its own: a drill that ran and
 * failed a check (exit 10) reports what it checked, as it does when it passes; a verify that
 * found differences the map did not cover (exit 9) reports its comparison.
 */
export const errorSchema: JsonSchema = object(
  {
    status: {type: 'integer', minimum: 1},
    error: object({code: {type: 'string', pattern: '^[A-Z][A-Z_]*$'}, name: nonEmpty, message: nonEmpty}, {fix: string}),
  },
  {
    result: {
      description: 'A failure with a result of its own: the report of a drill that failed one of its checks (exit 10), as drill.schema.json; the comparison of a verify that found unmarked differences (exit 9), as verify.schema.json.',
      anyOf: [resultSchemas.drill, resultSchemas.verify],
    },
  },
)

/** The schema documents as written to schemas/: with their draft, a title and where they apply. */
export function schemaDocuments(): Record<string, JsonSchema> {
  const draft = 'http://json-schema.org/draft-07/schema#'
  const out: Record<string, JsonSchema> = {}
  for (const [id, schema] of Object.entries(resultSchemas)) {
    const name = id.replace(/:/g, '-')
    out[`${name}.schema.json`] = {$schema: draft, title: `clonectl ${id.replace(/:/g, ' ')} --json`, description: `What \`clonectl ${id.replace(/:/g, ' ')} --json\` prints on stdout when it succeeds (exit status 0).`, ...schema}
  }
  out['error.schema.json'] = {$schema: draft, title: 'clonectl --json error', description: 'What any clonectl command prints on stdout under --json when it fails; status is the exit status.', ...errorSchema}
  return out
}
