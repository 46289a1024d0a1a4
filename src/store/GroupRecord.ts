/**
 * group.json: the identity of a clone group (DESIGN §3). One file per group, replaced
 * atomically by GroupStore.save; read back through parseGroupRecord, which trusts nothing:
 * any malformed document, or one of another formatVersion, is a CorruptStateError naming the
 * file and the field — never a half-read group.
 */
import {basename, dirname} from 'node:path'
import {CorruptStateError} from '../errors/errors.js'
import type {Fingerprint, VolumeKind} from '../volume/Volume.js'
import {isValidName} from './stateDir.js'

/** The only group.json format this clonectl reads and writes. */
export const GROUP_FORMAT_VERSION = 1

export type CloneState = 'synchronizing' | 'synchronized' | 'fractured' | 'out-of-sync' | 'restoring' | 'reverse-syncing'
export const CLONE_STATES: readonly CloneState[] = ['synchronizing', 'synchronized', 'fractured', 'out-of-sync', 'restoring', 'reverse-syncing']

export type UntrustedReason = 'source-changed' | 'clone-changed'
const UNTRUSTED_REASONS: readonly UntrustedReason[] = ['source-changed', 'clone-changed']
const VOLUME_KINDS: readonly VolumeKind[] = ['file', 'block', 'nbd']

export interface VolumeRecord {
  /** The path (or NBD URI) the user named. */
  path: string
  fingerprint: Fingerprint
}

export interface CloneRecord {
  name: string
  volume: VolumeRecord
  state: CloneState
  /** Why it is in that state, for status (e.g. "the sync was interrupted"). */
  stateReason?: string
  /** Map file name, relative to the group directory (e.g. "clone-c1.map"). */
  mapFile: string
  createdAt: string
  lastSyncAt?: string
  lastFractureAt?: string
  /** False when its map must not be trusted (a change behind clonectl's back). */
  trusted: boolean
  /** Why: the source changed (a restore from this clone just compares), or the clone did (refused without --force). */
  untrustedReason?: UntrustedReason
}

export interface OperationRecord {
  /** A uuid; also written in the header of the maps the operation made (P). */
  id: string
  kind: 'sync' | 'restore'
  clone: string
  protected?: boolean
  /** Compare-and-copy every extent (an untrusted map or a changed source). */
  compare?: boolean
  startedAt: string
  command: string
  pid: number
  totalExtents?: number
}

/** Set while a process may be writing the volumes; left behind by a crash. */
export interface SessionRecord {
  pid: number
  command: string
  startedAt: string
}

export interface GroupRecord {
  formatVersion: 1
  name: string
  extentSize: number
  createdAt: string
  source: VolumeRecord
  clones: CloneRecord[]
  operation?: OperationRecord
  session?: SessionRecord
}

const MIN_EXTENT = 4096
const MAX_EXTENT = 64 * 1024 * 1024
/**
 * A clone's map file is a plain "*.map" name inside the group directory: never a path, so a
 * damaged group.json can never make clonectl write or remove a file elsewhere.
 */
const MAP_FILE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.map$/

type Json = Record<string, unknown>

/** The fix for a damaged group.json, naming its group (the name of the directory holding it). */
export function damagedRecordFix(file: string): string {
  const group = basename(dirname(file))
  return `restore the file from a backup, or destroy the group (\`clonectl group destroy ${group} --force\`) and re-create it; volume data is not affected`
}

/**
 * Parse and validate the text of a group.json. Anything malformed, and any formatVersion
 * but 1, is a CorruptStateError whose message names `file` and the field. Unknown extra
 * fields are kept (they round-trip through save). Pure; does not wait.
 */
export function parseGroupRecord(text: string, file: string): GroupRecord {
  const bad = (what: string, fix = damagedRecordFix(file)): CorruptStateError => new CorruptStateError(`${file}: ${what}`, fix)
  let doc: unknown
  try {
    doc = JSON.parse(text)
  } catch (error) {
    throw bad(`not valid JSON (${(error as Error).message})`)
  }

  const isObj = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v)
  const show = (v: unknown): string => (v === undefined ? 'missing' : JSON.stringify(v))
  const obj = (v: unknown, field: string): Json => {
    if (!isObj(v)) throw bad(`field ${field} must be an object, found ${show(v)}`)
    return v
  }
  const str = (o: Json, k: string, field: string, opt: {optional?: boolean; nonEmpty?: boolean} = {}): void => {
    const v = o[k]
    if (v === undefined && opt.optional) return
    if (typeof v !== 'string' || (opt.nonEmpty && v === '')) throw bad(`field ${field}.${k} must be a${opt.nonEmpty ? ' non-empty' : ''} string, found ${show(v)}`)
  }
  const time = (o: Json, k: string, field: string, optional = false): void => {
    const v = o[k]
    if (v === undefined && optional) return
    if (typeof v !== 'string' || Number.isNaN(Date.parse(v))) throw bad(`field ${field}.${k} must be an ISO 8601 time, found ${show(v)}`)
  }
  const int = (o: Json, k: string, field: string, opt: {optional?: boolean; min?: number} = {}): void => {
    const v = o[k]
    if (v === undefined && opt.optional) return
    const min = opt.min ?? 0
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) throw bad(`field ${field}.${k} must be an integer ≥ ${min}, found ${show(v)}`)
  }
  const num = (o: Json, k: string, field: string): void => {
    const v = o[k]
    if (v !== undefined && (typeof v !== 'number' || !Number.isFinite(v))) throw bad(`field ${field}.${k} must be a number, found ${show(v)}`)
  }
  const bool = (o: Json, k: string, field: string, optional = false): void => {
    const v = o[k]
    if (v === undefined && optional) return
    if (typeof v !== 'boolean') throw bad(`field ${field}.${k} must be true or false, found ${show(v)}`)
  }
  const oneOf = (o: Json, k: string, field: string, allowed: readonly string[], optional = false): void => {
    const v = o[k]
    if (v === undefined && optional) return
    if (typeof v !== 'string' || !allowed.includes(v)) throw bad(`field ${field}.${k} is ${show(v)}, not one of ${allowed.join(', ')}`)
  }
  const name = (o: Json, k: string, field: string): void => {
    str(o, k, field)
    if (!isValidName(o[k] as string)) throw bad(`field ${field}.${k} ${show(o[k])} is not a valid name`)
  }
  const volume = (v: unknown, field: string): void => {
    const o = obj(v, field)
    str(o, 'path', field, {nonEmpty: true})
    const f = `${field}.fingerprint`
    const fp = obj(o.fingerprint, f)
    oneOf(fp, 'kind', f, VOLUME_KINDS)
    int(fp, 'size', f)
    for (const k of ['dev', 'ino', 'mtimeMs', 'ctimeMs']) num(fp, k, f)
    str(fp, 'majorMinor', f, {optional: true})
    str(fp, 'uri', f, {optional: true})
  }

  const root = obj(doc, '(the document)')
  if (root.formatVersion !== GROUP_FORMAT_VERSION) {
    if (typeof root.formatVersion === 'number')
      throw bad(`formatVersion ${root.formatVersion} is not supported (this clonectl reads ${GROUP_FORMAT_VERSION})`, 'use the clonectl version that wrote it, or a newer one')
    throw bad(`field formatVersion must be ${GROUP_FORMAT_VERSION}, found ${show(root.formatVersion)}`)
  }
  const g = 'group'
  name(root, 'name', g)
  int(root, 'extentSize', g, {min: MIN_EXTENT})
  const es = root.extentSize as number
  if (es > MAX_EXTENT || (es & (es - 1)) !== 0) throw bad(`field group.extentSize ${es} is out of range (4K..64M) or not a power of 2`)
  time(root, 'createdAt', g)
  volume(root.source, 'source')

  if (!Array.isArray(root.clones)) throw bad(`field clones must be an array, found ${show(root.clones)}`)
  const names = new Set<string>()
  const maps = new Set<string>()
  root.clones.forEach((c: unknown, i: number) => {
    const f = `clones[${i}]`
    const o = obj(c, f)
    name(o, 'name', f)
    const n = o.name as string
    if (names.has(n)) throw bad(`field ${f}.name: clone ${n} appears twice`)
    names.add(n)
    volume(o.volume, `${f}.volume`)
    oneOf(o, 'state', f, CLONE_STATES)
    str(o, 'stateReason', f, {optional: true})
    str(o, 'mapFile', f)
    const m = o.mapFile as string
    if (!MAP_FILE.test(m)) throw bad(`field ${f}.mapFile ${show(m)} is not a plain *.map file name in the group directory`)
    if (maps.has(m)) throw bad(`field ${f}.mapFile: ${m} is used by two clones`)
    maps.add(m)
    time(o, 'createdAt', f)
    time(o, 'lastSyncAt', f, true)
    time(o, 'lastFractureAt', f, true)
    bool(o, 'trusted', f)
    oneOf(o, 'untrustedReason', f, UNTRUSTED_REASONS, true)
  })

  if (root.operation !== undefined) {
    const f = 'operation'
    const o = obj(root.operation, f)
    str(o, 'id', f, {nonEmpty: true})
    oneOf(o, 'kind', f, ['sync', 'restore'])
    str(o, 'clone', f)
    if (!names.has(o.clone as string)) throw bad(`field operation.clone ${show(o.clone)} is not a clone of this group`)
    bool(o, 'protected', f, true)
    bool(o, 'compare', f, true)
    time(o, 'startedAt', f)
    str(o, 'command', f)
    int(o, 'pid', f, {min: 1})
    int(o, 'totalExtents', f, {optional: true})
  }
  if (root.session !== undefined) {
    const f = 'session'
    const o = obj(root.session, f)
    int(o, 'pid', f, {min: 1})
    str(o, 'command', f)
    time(o, 'startedAt', f)
  }
  return root as unknown as GroupRecord
}
