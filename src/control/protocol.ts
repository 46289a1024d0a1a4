/**
 * The control socket between a running `serve` (which owns the group) and every other
 * invocation (DESIGN §5). Newline-delimited JSON over a unix socket, mode 0600, in the group
 * directory. One request per connection; the server streams progress lines, then one result.
 */
export type ControlRequest =
  | {op: 'ping'}
  | {op: 'status'}
  | {op: 'sync'; clone: string; full?: boolean; rate?: number; background?: boolean}
  | {op: 'fracture'; clones: string[]}
  | {op: 'add'; clone: string; path: string; create?: boolean}
  | {op: 'remove'; clone: string}
  | {op: 'restore'; clone?: string; unprotected?: boolean; force?: boolean; rate?: number; background?: boolean; disconnectClients?: boolean}
  | {op: 'verify'; clone: string; repair?: boolean}
  | {op: 'pause'}
  | {op: 'resume'}
  | {op: 'rate'; rate?: number}
  | {op: 'cancel'}
  | {op: 'job'}
  | {op: 'drill'; clone: string; target: string; force?: boolean}

export interface ControlError {
  code: string
  exitCode: number
  message: string
  fix?: string
}

export type ControlMessage =
  | {type: 'progress'; progress: unknown}
  | {type: 'log'; message: string}
  | {type: 'result'; ok: true; value: unknown}
  | {type: 'result'; ok: false; error: ControlError}

export const controlSocketName = 'control.sock'

/** The fields of request `O`, besides `op`. */
type FieldsOf<O extends ControlRequest['op']> = Exclude<keyof Extract<ControlRequest, {op: O}>, 'op'>

/**
 * The fields each request may carry, and their types ('?' marks an optional one). Typed so
 * that a field added to ControlRequest and missing here (every request carrying it would be
 * refused as "unknown field") does not compile.
 */
const SHAPES: {[O in ControlRequest['op']]: Record<FieldsOf<O>, string>} = {
  ping: {},
  status: {},
  sync: {clone: 'name', full: 'boolean?', rate: 'rate?', background: 'boolean?'},
  fracture: {clones: 'names'},
  add: {clone: 'name', path: 'string', create: 'boolean?'},
  remove: {clone: 'name'},
  restore: {clone: 'name?', unprotected: 'boolean?', force: 'boolean?', rate: 'rate?', background: 'boolean?', disconnectClients: 'boolean?'},
  verify: {clone: 'name', repair: 'boolean?'},
  pause: {},
  resume: {},
  rate: {rate: 'rate?'},
  cancel: {},
  job: {},
  drill: {clone: 'name', target: 'string', force: 'boolean?'},
}

function fits(type: string, v: unknown): boolean {
  switch (type) {
    case 'boolean':
      return typeof v === 'boolean'
    case 'string':
      return typeof v === 'string' && v.length > 0
    case 'name':
      return typeof v === 'string' && v.length > 0 && v.length <= 256
    case 'names':
      return Array.isArray(v) && v.length > 0 && v.every((x) => fits('name', x))
    case 'rate':
      return typeof v === 'number' && Number.isFinite(v) && v >= 0
    default:
      return false
  }
}

const WANT: Record<string, string> = {boolean: 'true or false', string: 'a non-empty string', name: 'a name', names: 'a non-empty list of names', rate: 'a number of bytes per second (0: unlimited)'}

/**
 * Check a parsed control request (any JSON a client sent): a known op with the fields it
 * needs, each of its type, and nothing else. Returns the message for the first problem, or
 * the request. The server answers the message as a usage error, never as a bug.
 */
export function checkControlRequest(doc: unknown): ControlRequest | {problem: string} {
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) return {problem: `control request ${JSON.stringify(doc)} is not a JSON object`}
  const d = doc as Record<string, unknown>
  if (typeof d.op !== 'string' || !Object.hasOwn(SHAPES, d.op)) return {problem: `control request op ${JSON.stringify(d.op)} is not one of ${Object.keys(SHAPES).join(', ')}`}
  const shape = SHAPES[d.op as ControlRequest['op']]
  for (const k of Object.keys(d)) if (k !== 'op' && !Object.hasOwn(shape, k)) return {problem: `control request ${d.op} has an unknown field ${JSON.stringify(k)}`}
  for (const [k, t] of Object.entries(shape)) {
    const optional = t.endsWith('?')
    const type = optional ? t.slice(0, -1) : t
    const v = d[k]
    if (v === undefined || (optional && v === null)) {
      if (optional) continue
      return {problem: `control request ${d.op} lacks its field ${JSON.stringify(k)} (${WANT[type]})`}
    }
    if (!fits(type, v)) return {problem: `control request ${d.op}: field ${JSON.stringify(k)} is ${JSON.stringify(v)}, not ${WANT[type]}`}
  }
  return d as ControlRequest
}
