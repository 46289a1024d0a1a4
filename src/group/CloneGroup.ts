import type {DurableFs} from '../io/DurableFs.js'
import {monotonicMs} from '../io/clock.js'
import {ClonectlError, CorruptStateError, NotFoundError, RefusedError, StateError, UsageError, VolumeIoError} from '../errors/errors.js'
import {ExtentBitmap} from '../map/ExtentBitmap.js'
import type {PersistentMap} from '../map/PersistentMap.js'
import {applyCloneEvent, type CloneEvent, type MoveOptions, snapshotStates} from '../store/cloneStates.js'
import type {CloneRecord, CloneState, GroupRecord} from '../store/GroupRecord.js'
import type {GroupStore} from '../store/GroupStore.js'
import {findVolumeConflicts, type RecordedUse} from '../volume/identity.js'
import {openVolume} from '../volume/openVolume.js'
import type {Fingerprint, Volume} from '../volume/Volume.js'
import {Checkpointer} from '../engine/Checkpointer.js'
import {CollisionDetector} from '../engine/CollisionDetector.js'
import type {EngineGroup, EngineMember} from '../engine/EngineGroup.js'
import {type DeltaMap, extentCount, GroupMaps} from '../engine/GroupMaps.js'
import type {ProtectedRestoreMap} from '../engine/ProtectedRestoreMap.js'
import {Scoreboard} from '../engine/Scoreboard.js'
import {fingerprintsDiffer} from './fingerprint.js'

/** Where a group lives and how it reports. */
export interface GroupContext {
  fs: DurableFs
  store: GroupStore
  /** Diagnostics for stderr (warnings such as "changed outside clonectl"). */
  warn?: (message: string) => void
  /** An indeterminate wait begins (a held lock, a slow remote): the UI shows it; returns what ends it. */
  waiting?: (what: string, afterMs?: number) => () => void
}

export {extentCount, mapFileName, protectedMapFile} from '../engine/GroupMaps.js'

/** One clone of an open group: its record, volume (when opened) and delta map D[k]. */
export class CloneMember implements EngineMember {
  /** Mirrored writes in flight per extent (write-intent bits clear only when it reaches 0). */
  readonly mirrorInflight = new Map<number, number>()
  /**
   * Write-intent extents: D[k] is set there only because host writes are mirrored to this
   * clone (it got every one of them), not because it misses data; the sync engine skips
   * them. In memory only: after a crash their bits are plain "copy this" bits. Allocated on
   * the first mirrored write.
   */
  intent?: ExtentBitmap
  /** Intent extents written since the last sweep (md's write-intent bitmap: hot bits stay set). */
  private touched?: ExtentBitmap
  private lastSweep = 0

  /**
   * Why the clone's volume could not be opened (a deleted image, a detached or mounted
   * device): the group stays usable, and whatever needs this volume fails with this error.
   */
  unavailable?: ClonectlError
  /** The open error's own words, for the clone's state reason. */
  unavailableCause?: string
  /**
   * Why the clone's delta map file could not be opened (missing, truncated, bad header, sizes
   * that disagree with the group): its map was replaced by one with every extent set.
   */
  mapDamaged?: string

  /** Throw why the clone's volume is unavailable, if it is: before an operation changes any state. */
  requireAvailable(): void {
    if (this.unavailable) throw this.unavailable
  }

  constructor(
    /** The group's record, where the state machine records operations. */
    private readonly group: GroupRecord,
    public record: CloneRecord,
    public volume: Volume | undefined,
    public map: DeltaMap,
  ) {}

  get name(): string {
    return this.record.name
  }

  get state(): CloneState {
    return this.record.state
  }

  /**
   * Move this clone's state (src/store/cloneStates.ts: the table of valid moves, the
   * operation record and times updated with it); an invalid move is refused before anything
   * changes. The caller saves. Needs the group's record for the operation.
   */
  apply(event: CloneEvent, opts?: MoveOptions): void {
    this.afterMove(applyCloneEvent(this.group, this.record, event, opts))
  }

  /** The in-memory side of a state change (a move, or an undone one). */
  afterMove(state: CloneState): void {
    // No longer mirrored: its write-intent bits become plain delta bits (a stale set bit
    // costs a copy, never data).
    if (state !== 'synchronized' && state !== 'synchronizing') {
      this.intent = undefined
      this.touched = undefined
    }
  }

  /** D[k][e] set for a reason other than write-intent: the clone may miss data there. */
  needsCopy(e: number): boolean {
    return this.map.bits.get(e) && !(this.intent?.get(e) ?? false)
  }

  /** Extents the clone may miss data in (set, not write-intent). Does not wait. */
  dirtyCount(): number {
    const n = this.map.bits.countSet()
    if (!this.intent) return n
    const both = this.intent.clone()
    both.and(this.map.bits)
    return n - both.countSet()
  }

  /**
   * A host write to [s, e) is about to be issued. Decide whether it is mirrored to this clone
   * (before D[k] is set ahead, in the same tick as the collision detector's writeStart) and
   * mark the extents it makes write-intent; returns them, or undefined when not mirrored.
   * - synchronized: always mirrored; an extent whose bit was already set and not intent (a
   *   crash left it) stays a "copy this" bit: a 4 KiB write does not make 64 KiB equal.
   * - synchronizing: mirrored only when every extent is already equal (bit clear or intent)
   *   and none is being copied (`busy`): behind the sync's frontier. Otherwise the sync copies
   *   them (a write into an extent being copied is a collision: the engine copies it again),
   *   and intent extents in the range lose intent (the clone will miss this write there).
   */
  beginMirror(s: number, e: number, busy: (x: number) => boolean, region = 1): {marked: number[]; durable: [number, number]} | undefined {
    const {bits} = this.map
    const intent = this.intent
    if (this.state === 'synchronizing') {
      let clean = true
      for (let x = s; x < e && clean; x++) if ((bits.get(x) && !(intent?.get(x) ?? false)) || busy(x)) clean = false
      if (!clean) {
        intent?.clearRange(s, e)
        return undefined
      }
    }
    const marked: number[] = []
    this.intent ??= new ExtentBitmap(bits.count)
    this.touched ??= new ExtentBitmap(bits.count)
    let cold = false
    for (let x = s; x < e; x++) {
      if (bits.get(x) && !(intent?.get(x) ?? false)) continue
      if (!bits.get(x)) cold = true
      this.intent.set(x)
      this.touched.set(x)
      this.mirrorInflight.set(x, (this.mirrorInflight.get(x) ?? 0) + 1)
      marked.push(x)
    }
    if (!cold || region <= 1) return {marked, durable: [s, e]}
    // A bit this write must commit anyway: the commit sets the whole aligned region of
    // `region` extents (md's bitmap chunk), so the next writes nearby pay no commit. Only
    // extents equal now (bit clear) become intent; a bit already set keeps its meaning.
    const rs = Math.floor(s / region) * region
    const re = Math.min(bits.count, Math.ceil(e / region) * region)
    for (let x = bits.nextClear(rs); x >= 0 && x < re; x = x + 1 < re ? bits.nextClear(x + 1) : -1) if (!busy(x)) this.intent.set(x)
    return {marked, durable: [rs, re]}
  }

  /**
   * The mirrored write that marked `marked` settled. Its bits stay set (cleared lazily by
   * sweepIntent); when it failed on either volume they stop being intent: the sync copies them.
   */
  endMirror(marked: number[], ok: boolean): void {
    for (const x of marked) {
      const n = (this.mirrorInflight.get(x) ?? 1) - 1
      if (n > 0) this.mirrorInflight.set(x, n)
      else this.mirrorInflight.delete(x)
      if (!ok) this.intent?.clear(x)
    }
  }

  /**
   * Lazy clear of write-intent bits (recipe 2, as md's bitmap): an intent extent with no
   * mirrored write in flight and none since the previous sweep, at least `quietMs` ago, is
   * equal on both volumes: clear its bit in memory; the checkpoint that follows makes it
   * durable only after fdatasyncing both volumes. Hot extents keep their bit, so their next
   * write pays no map commit. `force` (no writes in flight: close, fracture) clears every
   * idle one. Does not wait.
   */
  sweepIntent(quietMs: number, force = false): void {
    const intent = this.intent
    if (!intent || !this.touched) return
    const now = monotonicMs()
    if (!force && now - this.lastSweep < quietMs) return
    this.lastSweep = now
    // Word at a time: with 16 MiB regions the intent bits may cover the whole volume.
    const drop = intent.clone()
    if (!force) drop.andNot(this.touched)
    for (const x of this.mirrorInflight.keys()) drop.clear(x)
    for (const [s, e] of drop.runs()) {
      intent.clearRange(s, e)
      this.map.clear(s, e)
    }
    this.touched.clearAll()
  }

  /** The clone's volume; an error if it was not opened (e.g. opened for status only). */
  get vol(): Volume {
    this.requireAvailable()
    if (!this.volume) throw new StateError(`clone ${this.name} is not open`)
    return this.volume
  }
}

/**
 * The error for a clone whose volume could not be opened: the open error's words and exit
 * status, prefixed with the clone's name, and a fix that says both ways out.
 */
function unavailableError(group: string, m: CloneMember, error: ClonectlError): ClonectlError {
  const message = `clone ${m.name} of group ${group} is unavailable: ${error.message}`
  const fix = `bring its volume back at ${m.record.volume.path} (attach the device, put the image back, unmount it), or remove the clone: \`clonectl clone remove ${group} ${m.name}\``
  if (error instanceof NotFoundError) return new NotFoundError(message, fix)
  if (error instanceof RefusedError) return new RefusedError(message, fix)
  if (error instanceof UsageError) return new UsageError(message, fix)
  return new VolumeIoError(message, error instanceof VolumeIoError ? error.errno : undefined, fix)
}

/** A record's volumes, source first, as findVolumeConflicts takes them. */
function groupVolumeUses(r: GroupRecord): RecordedUse[] {
  return [{group: r.name, clone: '(source)', path: r.source.path}, ...r.clones.map((c) => ({group: r.name, clone: c.name, path: c.volume.path}))]
}

/** The owner of a group's map files, for its record (open or not: `status` opens read-only through it). */
export function groupMaps(ctx: GroupContext, record: GroupRecord): GroupMaps {
  return new GroupMaps(ctx.fs, ctx.store, record.name, {extentSize: record.extentSize, volumeSize: record.source.fingerprint.size})
}

export interface OpenOptions {
  /** Open volumes for writing (every mutating command). */
  writable: boolean
  /** Clones whose volume to open read-only (the restore clone of a protected restore: INV-3). */
  readOnlyClones?: string[]
  /** Open no volumes at all (status, list). */
  volumes?: boolean
}

/**
 * An open clone group: its record, source, clones, maps, and the in-memory restore machinery
 * shared by the engines (scoreboard, collision detector, checkpointer). The caller holds the
 * group lock for as long as it is open writable.
 */
export class CloneGroup implements EngineGroup {
  readonly scoreboard = new Scoreboard()
  readonly collisions = new CollisionDetector()
  readonly checkpointer: Checkpointer
  /** The group's map files: D[k] of every clone, and P while a protected restore runs. */
  readonly maps: GroupMaps
  /** Volumes whose fingerprint differed from group.json at open (changed behind our back). */
  readonly changedOutside = new Set<string>()
  private closed = false

  private constructor(
    readonly ctx: GroupContext,
    readonly record: GroupRecord,
    public source: Volume | undefined,
    readonly members: Map<string, CloneMember>,
    readonly writable: boolean,
    maps?: GroupMaps,
  ) {
    this.maps = maps ?? groupMaps(ctx, record)
    this.checkpointer = new Checkpointer(
      () => ({p: this.maps.p ?? null, ds: [...this.members.values()].map((m) => m.map)}),
      (v, error) => this.cloneFlushFailed(v, error),
    )
  }

  /**
   * A clone volume could not be made durable (a remote clone vanished, a disk failed): its
   * copies since the last checkpoint are done again later (the Checkpointer abandons its
   * map's ticket), and a mirrored clone is fractured, as for a failed mirrored write, so the
   * host's writes go on. The source failing is fatal (undefined): nothing is committed.
   */
  private cloneFlushFailed(v: Volume, error: unknown): PersistentMap[] | undefined {
    const m = [...this.members.values()].find((x) => x.volume === v)
    if (!m || m.state === 'restoring' || m.state === 'reverse-syncing') return undefined
    if (m.state === 'synchronized') {
      const why = `a flush of the clone failed: ${error instanceof Error ? error.message : String(error)}`
      m.apply('fracture', {reason: why})
      this.ctx.warn?.(`clone ${m.name} fractured: ${why}`)
      void this.save().catch(() => undefined)
    }
    return [m.map]
  }

  get name(): string {
    return this.record.name
  }

  /** The protected restore map while a protected restore runs (set by the restore). */
  get protectedMap(): ProtectedRestoreMap | undefined {
    return this.maps.p
  }

  get extentSize(): number {
    return this.record.extentSize
  }

  get volumeSize(): number {
    return this.record.source.fingerprint.size
  }

  get extentCount(): number {
    return extentCount(this.volumeSize, this.extentSize)
  }

  get src(): Volume {
    if (!this.source) throw new StateError(`the source of group ${this.name} is not open`)
    return this.source
  }

  member(name: string): CloneMember {
    const m = this.members.get(name)
    if (!m)
      throw new NotFoundError(
        `group ${this.name} has no clone named ${name}`,
        `list its clones with \`clonectl status ${this.name}\``,
      )
    return m
  }

  /**
   * Open a group: load group.json, open every map (a corrupt map is an error, never empty),
   * open the volumes, and compare fingerprints. Waits for I/O.
   */
  static async open(ctx: GroupContext, name: string, opts: OpenOptions): Promise<CloneGroup> {
    const record = await ctx.store.load(name)
    const members = new Map<string, CloneMember>()
    const withVolumes = opts.volumes ?? true
    const opened: Volume[] = []
    const damaged = new Map<string, CorruptStateError>()
    const maps = groupMaps(ctx, record)
    try {
      for (const c of record.clones) {
        let map: DeltaMap
        try {
              map = await maps.openDelta(c.mapFile)
        } catch (error) {
          // One clone's damaged map must not take the group down: that clone alone starts
          // over with every extent marked (the safe value of a delta map).
          if (!(error instanceof CorruptStateError)) throw error
          damaged.set(c.name, error)
              map = await maps.deltaStandIn(c.mapFile)
        }
        const damage = map.damageReport()
        if (damage) ctx.warn?.(`clone ${c.name}: ${damage}`)
        members.set(c.name, new CloneMember(record, c, undefined, map))
      }
      let source: Volume | undefined
      if (withVolumes) {
        // Every open re-checks that no volume is another volume of any group (DESIGN §3).
        const conflicts = await findVolumeConflicts(ctx.fs, groupVolumeUses(record), await ctx.store.allClonePaths({except: name, onDamaged: (d) => ctx.warn?.(`group ${d.name} is damaged (${d.reason}); the volumes of group ${name} cannot be checked against its own`)}), ctx.store.groupFile(name))
        if (conflicts.source) throw conflicts.source
        source = await openVolume(ctx.fs, record.source.path, {write: opts.writable})
        opened.push(source)
        for (const m of members.values()) {
          const ro = !opts.writable || (opts.readOnlyClones ?? []).includes(m.name)
          const conflict = conflicts.clones.get(m.name)
          if (conflict) {
            // Never opened: refused by name whenever needed, like an unavailable volume.
            m.unavailable = conflict
            m.unavailableCause = conflict.message
            continue
          }
          try {
            m.volume = await openVolume(ctx.fs, m.record.volume.path, {
              write: !ro,
              knownSize: m.record.volume.fingerprint.size,
              onRemoteDown: (error) => ctx.warn?.(`clone ${m.name} is unreachable: ${error.message} (its requests fail until it answers)`),
            })
          } catch (error) {
            // A clone that cannot be opened must not take the source and the other clones
            // down with it (a backup disk detached, a point-in-time copy mounted for reading).
            if (!(error instanceof ClonectlError) || error instanceof CorruptStateError) throw error
            m.unavailable = unavailableError(record.name, m, error)
            m.unavailableCause = error.message
            continue
          }
          opened.push(m.volume)
        }
      }
      const g = new CloneGroup(ctx, record, source, members, opts.writable, maps)
      for (const [clone, error] of damaged) g.noteDamagedMap(g.member(clone), error)
      if (withVolumes) await g.checkFingerprints()
      if (opts.writable) await g.fractureUnavailable()
      if (opts.writable && damaged.size > 0) await g.rebuildDamagedMaps()
      return g
    } catch (error) {
      await Promise.allSettled([...opened.map((v) => v.close()), ...[...members.values()].map((m) => m.map.close())])
      throw error
    }
  }

  /**
   * A clone whose map is damaged is, in memory, marked with every extent to copy, and a
   * mirrored one is no longer a copy anyone may count on (out-of-sync). Other states stay:
   * a fractured clone's data is still its point-in-time copy; only what differs is unknown.
   *
   * During a protected restore FROM this clone (state restoring), D[c] all set is safe: D[c]
   * only says which extents the restore still copies from the clone, so it copies every one
   * again, each of which already is, or becomes, the clone's data; P, not D[c], is what keeps
   * copies off the extents hosts wrote (INV-2), and P is never replaced this way (a damaged P
   * stays a named stop of the restore). An unprotected restore (reverse-syncing) likewise
   * copies all of it again. Other clones' maps only ever widen during a restore.
   */
  private noteDamagedMap(m: CloneMember, error: CorruptStateError): void {
    const reason = `map damaged: ${error.message}; every extent is marked to copy: run \`clonectl clone sync ${this.name} ${m.name}\``
    m.mapDamaged = reason
    m.apply('map-damaged', {reason})
    this.ctx.warn?.(`clone ${m.name} of group ${this.name}: ${reason}`)
  }

  /**
   * Write a fresh map with every extent set over each damaged one. The state is saved first:
   * a crash in between leaves the map damaged (rebuilt again at the next open) and the clone
   * already out of mirroring, never a mirrored clone with a map that clears bits it cannot know.
   */
  private async rebuildDamagedMaps(): Promise<void> {
    await this.save()
    for (const m of this.members.values()) {
      if (!m.mapDamaged) continue
      const map = await this.maps.rewriteDelta(m.record.mapFile, m.map)
      await m.map.close()
      m.map = map
    }
  }

  /**
   * A mirrored clone whose volume could not be opened is fractured, durably, before any host
   * write: from now on its map records what it misses (recipe 1 marks every clone's map), so
   * a sync once it is back copies exactly that. Its state says why.
   */
  private async fractureUnavailable(): Promise<void> {
    let changed = false
    for (const m of this.members.values()) {
      if (!m.unavailable) continue
      this.ctx.warn?.(`${m.unavailable.message}${m.state === 'synchronized' ? '; fractured: host writes are recorded in its map until it is back' : ''}`)
      if (m.state !== 'synchronized') continue
      m.apply('fracture', {reason: `its volume was unavailable (${m.unavailableCause ?? m.unavailable.message})`})
      changed = true
    }
    if (changed) await this.save()
  }

  /**
   * Compare each volume with the fingerprint in group.json. A session that did not close
   * (a crash while clonectl itself was writing) explains a changed mtime: its writes were
   * tracked by the maps, so they are trusted. Otherwise a change means someone wrote the
   * volume behind clonectl's back and its maps cannot be trusted.
   */
  private async checkFingerprints(): Promise<void> {
    const crashedSession = this.record.session !== undefined || this.record.operation !== undefined
    const check = async (label: string, v: Volume, fp: Fingerprint): Promise<boolean> => {
      const now = await v.fingerprint()
      if (now.size < this.volumeSize)
        throw new StateError(
          `${label} ${v.path} is now ${now.size} bytes, smaller than the group's ${this.volumeSize}`,
          'restore the volume to its size, or destroy and re-create the group',
        )
      return fingerprintsDiffer(fp, now, {ignoreTimes: crashedSession})
    }
    if (await check('source', this.src, this.record.source.fingerprint)) {
      this.changedOutside.add('(source)')
      this.ctx.warn?.(`the source ${this.src.path} changed outside clonectl: no delta map is trusted; syncs compare and copy every extent`)
      for (const m of this.members.values()) {
        m.record.trusted = false
        m.record.untrustedReason ??= 'source-changed'
      }
    }
    for (const m of this.members.values()) {
      if (m.volume && (await check(`clone ${m.name}`, m.volume, m.record.volume.fingerprint))) {
        this.changedOutside.add(m.name)
        this.ctx.warn?.(`clone ${m.name} (${m.volume.path}) changed outside clonectl: its delta map is not trusted`)
        m.record.trusted = false
        m.record.untrustedReason = 'clone-changed'
      }
    }
  }

  /**
   * Mark the group as being written by this process, durably, before the first write: if we
   * crash, the next open knows the changed mtimes are ours. Waits for group.json to be saved.
   */
  async beginSession(command: string): Promise<void> {
    this.record.session = {pid: process.pid, command, startedAt: new Date().toISOString()}
    await this.save()
  }

  /**
   * Refresh fingerprints from the volumes (after our own writes). A clone whose volume went
   * away while open (its image deleted or moved, a device detached) is that clone's problem
   * only: it is marked unavailable, fractured if it was mirrored, and keeps its old
   * fingerprint; the operation that asked goes on. The source failing is an error.
   */
  async refreshFingerprints(): Promise<void> {
    if (this.source) this.record.source.fingerprint = await this.source.fingerprint()
    for (const m of this.members.values()) {
      if (!m.volume || m.unavailable) continue
      try {
        m.record.volume.fingerprint = await m.volume.fingerprint()
      } catch (error) {
        if (!(error instanceof ClonectlError) || error instanceof CorruptStateError) throw error
        this.volumeVanished(m, error)
      }
    }
  }

  /**
   * Look for clone volumes that went away since the group was opened (stat only) and mark
   * each as volumeVanished does, saving the record if any did. For a long-running owner
   * (serve) before it answers status or starts an operation. Waits.
   */
  async noticeVanishedVolumes(): Promise<void> {
    let changed = false
    for (const m of this.members.values()) {
      if (!m.volume || m.unavailable) continue
      try {
        await m.volume.fingerprint()
      } catch (error) {
        if (!(error instanceof ClonectlError) || error instanceof CorruptStateError) throw error
        this.volumeVanished(m, error)
        changed = true
      }
    }
    // Saved when possible; in memory it is marked either way, and serve's status shows memory.
    if (changed) await this.save().catch((error: unknown) => this.ctx.warn?.(`saving group ${this.name}: ${error instanceof Error ? error.message : String(error)}`))
  }

  /**
   * A clone's volume vanished while open: whatever needs it from now on is refused naming
   * it (as for a volume that could not be opened), and a mirrored clone is fractured, so
   * host writes from here on are recorded in its map. The caller saves the record.
   */
  volumeVanished(m: CloneMember, error: ClonectlError): void {
    m.unavailable = unavailableError(this.name, m, error)
    m.unavailableCause = error.message
    const mirrored = m.state === 'synchronized'
    this.ctx.warn?.(`${m.unavailable.message}${mirrored ? '; fractured: host writes are recorded in its map until it is back' : ''}`)
    if (!mirrored) return
    m.apply('fracture', {reason: `its volume became unavailable (${error.message})`})
  }

  private saving: Promise<void> = Promise.resolve()

  /**
   * group.json, atomically (temp, fsync, rename, fsync dir). Saves are serialized, each
   * writing the record as it is when its turn comes, so the last save always wins. Waits.
   */
  save(): Promise<void> {
    const run = this.saving.then(async () => {
      this.record.clones = [...this.members.values()].map((m) => m.record)
      await this.ctx.store.save(this.record)
    })
    this.saving = run.catch(() => undefined)
    return run
  }

  /**
   * What an operation's start changes in the record (the operation, the clones' states):
   * the returned function puts it back in memory. For a start whose save failed (a full
   * state file system): the group then stays as group.json says, so status (live under
   * serve) and the next request agree with it. Does not wait.
   */
  snapshotForUndo(): () => void {
    return this.snapshotMembersForUndo([...this.members.values()], true)
  }

  /**
   * The states, reasons and fracture times of `members` (and the operation, with
   * `operation`), to put back in memory when the save of their moves failed. Does not wait.
   */
  snapshotMembersForUndo(members: CloneMember[], operation = false): () => void {
    const undo = snapshotStates(
      members.map((m) => m.record),
      operation ? this.record : undefined,
    )
    return () => {
      undo()
      for (const m of members) m.afterMove(m.state)
    }
  }

  noteWritten(v: Volume): void {
    this.checkpointer.noteWritten(v)
  }

  /**
   * How long a mirrored extent must go unwritten before its write-intent bit is cleared: a
   * write to an extent whose clear was committed pays a map commit again.
   */
  intentQuietMs = 2000

  /** Make completed copies and host writes durable (DESIGN §4). Waits. */
  checkpoint(): Promise<void> {
    for (const m of this.members.values()) m.sweepIntent(this.intentQuietMs)
    return this.checkpointer.checkpoint()
  }

  /** Add a clone member with a fresh map (all bits set: the first sync is full). */
  async addMember(record: CloneRecord, volume: Volume | undefined, initial: 'all' | 'none'): Promise<CloneMember> {
    const bits = new ExtentBitmap(this.extentCount)
    if (initial === 'all') bits.setAll()
    const map = await this.maps.createDelta(record.mapFile, bits)
    const m = new CloneMember(this.record, record, volume, map)
    this.members.set(record.name, m)
    return m
  }

  /**
   * Close: final checkpoint, fresh fingerprints, the session marker cleared, volumes and maps
   * closed. Waits. Safe to call twice.
   */
  async close(opts: {save?: boolean} = {}): Promise<void> {
    if (this.closed) return
    this.closed = true
    try {
      if (this.writable && (opts.save ?? true)) {
        // No host write is in flight any more: every idle write-intent bit may go.
        for (const m of this.members.values()) m.sweepIntent(0, true)
        await this.checkpoint()
        await this.refreshFingerprints()
        delete this.record.session
        await this.save()
      }
    } finally {
      const all: Array<Promise<void>> = []
      if (this.source) all.push(this.source.close())
      for (const m of this.members.values()) {
        if (m.volume) all.push(m.volume.close())
        all.push(m.map.close())
      }
      if (this.maps.p) all.push(this.maps.p.close())
      await Promise.allSettled(all)
    }
  }
}
