import {CorruptStateError} from '../errors/errors.js'
import type {Fingerprint} from '../volume/Volume.js'

export type CloneState = 'synchronizing' | 'synchronized' | 'fractured' | 'out-of-sync' | 'restoring' | 'reverse-syncing'
export const CLONE_STATES: readonly CloneState[] = ['synchronizing', 'synchronized', 'fractured', 'out-of-sync', 'restoring', 'reverse-syncing']

export interface VolumeRecord {
  path: string
  fingerprint: Fingerprint
}

export interface CloneRecord {
  name: string
  volume: VolumeRecord
  state: CloneState
  stateReason?: string
  /** Map file name in the group directory. */
  mapFile: string
  createdAt: string
  lastSyncAt?: string
  lastFractureAt?: string
  /** False when its map must not be trusted (a change behind clonectl's back). */
  trusted: boolean
  /** Why: the source changed (a restore from this clone just compares), or the clone did (refused without --force). */
  untrustedReason?: 'source-changed' | 'clone-changed'
}

export interface OperationRecord {
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

type Json = Record<string, unknown>

/** Parse and validate group.json; anything malformed is a CorruptStateError naming the file and field. */
export function parseGroupRecord(text: string, file: string): GroupRecord {
  const bad = (what: string): CorruptStateError =>
    new CorruptStateError(`${file}: ${what}`, 'restore the file from a backup, or destroy the group (`clonectl group destroy --force`) and re-create it; volume data is not affected')
  let doc: unknown
  try {
    doc = JSON.parse(text)
  } catch (error) {
    throw bad(`not valid JSON (${(error as Error).message})`)
  }
  const obj = (v: unknown, field: string): Json => {
    if (!v || typeof v !== 'object' || Array.isArray(v)) throw bad(`field ${field} must be an object`)
    return v as Json
  }
  const str = (o: Json, k: string, field: string, optional = false): void => {
    if (o[k] === undefined && optional) return
    if (typeof o[k] !== 'string') throw bad(`field ${field}.${k} must be a string`)
  }
  const num = (o: Json, k: string, field: string, optional = false): void => {
    if (o[k] === undefined && optional) return
    if (typeof o[k] !== 'number' || !Number.isFinite(o[k])) throw bad(`field ${field}.${k} must be a number`)
  }
  const volume = (v: unknown, field: string): void => {
    const o = obj(v, field)
    str(o, 'path', field)
    const fp = obj(o.fingerprint, `${field}.fingerprint`)
    if (!['file', 'block', 'nbd'].includes(fp.kind as string)) throw bad(`field ${field}.fingerprint.kind is not file, block or nbd`)
    num(fp, 'size', `${field}.fingerprint`)
  }
  const root = obj(doc, 'the document')
  if (root.formatVersion !== 1) throw bad(`formatVersion ${String(root.formatVersion)} is not supported (this clonectl reads 1)`)
  str(root, 'name', 'group')
  num(root, 'extentSize', 'group')
  str(root, 'createdAt', 'group')
  volume(root.source, 'source')
  if (!Array.isArray(root.clones)) throw bad('field clones must be an array')
  root.clones.forEach((c: unknown, i: number) => {
    const f = `clones[${i}]`
    const o = obj(c, f)
    str(o, 'name', f)
    volume(o.volume, `${f}.volume`)
    if (!CLONE_STATES.includes(o.state as CloneState)) throw bad(`field ${f}.state "${String(o.state)}" is not a clone state`)
    str(o, 'mapFile', f)
    str(o, 'createdAt', f)
    if (typeof o.trusted !== 'boolean') throw bad(`field ${f}.trusted must be true or false`)
  })
  if (root.operation !== undefined) {
    const o = obj(root.operation, 'operation')
    str(o, 'id', 'operation')
    if (o.kind !== 'sync' && o.kind !== 'restore') throw bad('field operation.kind must be sync or restore')
    str(o, 'clone', 'operation')
    num(o, 'pid', 'operation')
  }
  return root as unknown as GroupRecord
}
