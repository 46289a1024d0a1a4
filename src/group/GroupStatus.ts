import {askGroupServer} from '../control/ControlClient.js'
import {ClonectlError, CorruptStateError, errnoOf} from '../errors/errors.js'
import {ExtentBitmap} from '../map/ExtentBitmap.js'
import type {CloneState, GroupRecord} from '../store/GroupRecord.js'
import {GroupLock} from '../store/GroupLock.js'
import {type DamagedGroupReport, damagedReport} from '../store/GroupStore.js'
import {isNbdUri} from '../volume/openVolume.js'
import type {GroupContext} from './CloneGroup.js'
import type {ProgressEvent} from './GroupOperations.js'
import {extentCount, groupMaps} from './CloneGroup.js'
import {jobRequest, withLiveJob} from './JobControl.js'

export interface CloneStatus {
  name: string
  path: string
  state: CloneState
  stateReason?: string
  /** Extents whose delta bit is set (they may differ from the source). */
  dirtyExtents: number
  dirtyBytes: number
  /** 100 × (1 − dirty / total), to one decimal. */
  inSyncPercent: number
  trusted: boolean
  /**
   * Pages of its delta map that failed their checksum when read: every extent of them counts
   * as dirty (the next sync copies them). Absent when none.
   */
  damagedMapPages?: number[]
  /** One line naming the map file, the pages and their extents, when damagedMapPages is set. */
  mapDamage?: string
  lastSyncAt?: string
  lastFractureAt?: string
  /**
   * Why its volume cannot be used now (missing, unreadable, not a volume), when it cannot:
   * the recorded state is then history, not a copy one can count on. Local volumes only;
   * a remote's reachability is not probed by status.
   */
  unavailable?: string
}

export interface OperationStatus {
  id: string
  kind: 'sync' | 'restore'
  clone: string
  protected?: boolean
  startedAt: string
  /** running: its process holds the group; interrupted: nobody does (resume it). */
  state: 'running' | 'interrupted'
  pid: number
  totalExtents?: number
  remainingExtents: number
  percentDone: number
  /** Extents the hosts wrote during a protected restore (P). */
  hostWrittenExtents?: number
  /**
   * Set when the process running the job answered (serve, or a foreground job's socket):
   * whether `clonectl job pause` holds it, and its rate in bytes/s (absent: unlimited).
   * remainingExtents and percentDone are then its live counts.
   */
  paused?: boolean
  rate?: number
}

export interface GroupStatus {
  name: string
  source: {path: string; size: number}
  extentSize: number
  extentCount: number
  createdAt: string
  clones: CloneStatus[]
  operation?: OperationStatus
  /** Who holds the group lock right now, if anyone. */
  lockedBy?: {pid: number; command: string; startedAt: string}
  /** When a `serve` owns the group: its export and the operation it runs, live. */
  server?: {pid: number; nbdSocket?: string; tcpPort?: number; connections: number; payloadBytes: number; memoryHandBacks: number; operation?: ProgressEvent}
}

function popcount(bits: ExtentBitmap, extentSize: number, volumeSize: number): {extents: number; bytes: number} {
  const extents = bits.countSet()
  let bytes = extents * extentSize
  const last = bits.count - 1
  if (last >= 0 && bits.get(last)) bytes -= bits.count * extentSize - volumeSize
  return {extents, bytes}
}

/** Why a local volume cannot be opened now, from a stat (status opens no volume), or undefined. */
async function volumeProblem(ctx: GroupContext, path: string): Promise<string | undefined> {
  if (isNbdUri(path)) return undefined
  try {
    const st = await ctx.fs.stat(path)
    return st.isFile || st.isBlockDevice ? undefined : `volume ${path} is neither an image file nor a block device`
  } catch (error) {
    const errno = errnoOf(error)
    if (errno === 'ENOENT' || errno === 'ENOTDIR') return `volume ${path} does not exist`
    return `volume ${path} cannot be examined (${errno ?? String(error)})`
  }
}

/**
 * The state of one group, read without taking its lock (status never waits on a running
 * operation). Maps are read from disk: counts are as of the holder's last checkpoint.
 */
export async function groupStatus(ctx: GroupContext, name: string): Promise<GroupStatus> {
  const record: GroupRecord = await ctx.store.load(name)
  const size = record.source.fingerprint.size
  const count = extentCount(size, record.extentSize)
  const holder = await GroupLock.inspect(ctx.store.groupDir(name))
  const clones: CloneStatus[] = []
  const bitsOf = new Map<string, ExtentBitmap>()
  // Read-only: status holds no lock, so it repairs and converts nothing (the next command that opens the group does).
  const maps = groupMaps(ctx, record)
  for (const c of record.clones) {
    let bits: ExtentBitmap
    let damaged: string | undefined
    let damage: string | undefined
    let damagedPages: number[] = []
    try {
      const map = await maps.openDeltaReadOnly(c.mapFile)
      bits = map.bits.clone()
      damage = map.damageReport()
      damagedPages = [...map.damagedPages]
      await map.close()
    } catch (error) {
      // One clone's damaged map is that clone's problem: shown as every extent to copy (what
      // the next writable open makes it), never as the whole group failing.
      if (!(error instanceof CorruptStateError)) throw error
      damaged = `map damaged: ${error.message}; every extent is marked to copy: run \`clonectl clone sync ${name} ${c.name}\``
      bits = new ExtentBitmap(count)
      bits.setAll()
    }
    bitsOf.set(c.name, bits)
    const dirty = popcount(bits, record.extentSize, size)
    const interruptedSync = record.operation?.kind === 'sync' && record.operation.clone === c.name && !holder
    const mirrored = c.state === 'synchronized' || c.state === 'synchronizing'
    clones.push({
      name: c.name,
      path: c.volume.path,
      state: interruptedSync || (damaged && mirrored) ? 'out-of-sync' : c.state,
      stateReason: damaged ?? c.stateReason,
      dirtyExtents: dirty.extents,
      dirtyBytes: dirty.bytes,
      inSyncPercent: Math.floor(1000 * (1 - dirty.extents / Math.max(count, 1))) / 10,
      trusted: c.trusted,
      ...(damage ? {damagedMapPages: damagedPages, mapDamage: damage} : {}),
      lastSyncAt: c.lastSyncAt,
      lastFractureAt: c.lastFractureAt,
      ...(await volumeProblem(ctx, c.volume.path).then((why) => (why ? {unavailable: why} : {}))),
    })
  }
  let operation: OperationStatus | undefined
  const op = record.operation
  if (op) {
    let remaining = bitsOf.get(op.clone)?.countSet() ?? 0
    let hostWritten: number | undefined
    if (op.kind === 'restore' && op.protected) {
      try {
        const P = await maps.openPReadOnly(op.id)
        const d = bitsOf.get(op.clone)
        if (d) {
          const left = d.clone()
          left.andNot(P.bits)
          remaining = left.countSet()
        }
        hostWritten = P.bits.countSet()
        await P.close()
      } catch {
        // A missing or damaged P is reported by `restore` itself, with its fix.
      }
    }
    const total = op.totalExtents ?? count
    operation = {
      id: op.id,
      kind: op.kind,
      clone: op.clone,
      protected: op.protected,
      startedAt: op.startedAt,
      state: holder ? 'running' : 'interrupted',
      pid: op.pid,
      totalExtents: op.totalExtents,
      remainingExtents: remaining,
      percentDone: total > 0 ? Math.floor(1000 * (1 - Math.min(remaining, total) / total)) / 10 : 100,
      hostWrittenExtents: hostWritten,
    }
  }
  return {
    name,
    source: {path: record.source.path, size},
    extentSize: record.extentSize,
    extentCount: count,
    createdAt: record.createdAt,
    clones,
    operation,
    lockedBy: holder ? {pid: holder.pid, command: holder.command, startedAt: holder.startedAt} : undefined,
  }
}

/** `status`: from the owning server when one runs (live progress), else from disk. */
export async function status(ctx: GroupContext, group: string): Promise<GroupStatus> {
  // A server that answers with an error is reported, never papered over with group.json,
  // which may be behind what the server does (a clone it no longer mirrors).
  const served = await askGroupServer<GroupStatus>(ctx, group, {op: 'status'}).catch((error: unknown) => {
    // A server stopping, gone or unreachable mid-request has saved, or is saving, what it did.
    if (!(error instanceof ClonectlError) || error.code === 'INTERRUPTED' || error.code === 'SERVER_STOPPED') return undefined
    throw error
  })
  if (served) return served.value
  const s = await groupStatus(ctx, group)
  // A foreground job (no serve) answers on its job socket: paused, rate and live progress.
  if (s.operation?.state === 'running') withLiveJob(s, await jobRequest(ctx, group, {op: 'job'}).catch(() => undefined))
  return s
}

/**
 * status of every group: a group whose state cannot be read or trusted is listed as damaged
 * (its file and the reason) and never hides the others. Waits.
 */
export async function statusAll(ctx: GroupContext): Promise<Array<GroupStatus | DamagedGroupReport>> {
  // Groups are independent and status only reads: asked eight at a time, their small reads
  // overlap (a `status` of many groups does not pay each group's round trips in turn, nor
  // open every group's files at once).
  const names = await ctx.store.list()
  const reports: Array<PromiseSettledResult<GroupStatus>> = new Array(names.length)
  let next = 0
  const worker = async (): Promise<void> => {
    for (let i = next++; i < names.length; i = next++)
      reports[i] = await status(ctx, names[i]).then(
        (value) => ({status: 'fulfilled', value}),
        (reason: unknown) => ({status: 'rejected', reason}),
      )
  }
  await Promise.all(Array.from({length: Math.min(8, names.length)}, worker))
  return reports.map((r, i) => {
    if (r.status === 'fulfilled') return r.value
    const d = ctx.store.damage(names[i], r.reason)
    if (!d) throw r.reason
    ctx.warn?.(`group ${names[i]} is damaged: ${d.reason}`)
    return damagedReport(d)
  })
}
