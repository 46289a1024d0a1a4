import {NotFoundError, RefusedError, StateError, UsageError} from '../errors/errors.js'
import {dropOperation, NEW_CLONE} from '../store/cloneStates.js'
import type {CloneRecord, GroupRecord} from '../store/GroupRecord.js'
import type {DamagedGroup, VolumeUse} from '../store/GroupStore.js'
import type {Volume} from '../volume/Volume.js'
import {GroupLock} from '../store/GroupLock.js'
import {stateWriteError, validateName} from '../store/stateDir.js'
import {FileVolume} from '../volume/FileVolume.js'
import {checkCloneCandidate, checkCloneSize} from '../volume/identity.js'
import {isNbdUri, openVolume} from '../volume/openVolume.js'
import {GroupMaps} from '../engine/GroupMaps.js'
import {CloneGroup, type GroupContext, mapFileName} from './CloneGroup.js'

export const MIN_EXTENT = 4096
export const MAX_EXTENT = 64 * 1024 * 1024
export const DEFAULT_EXTENT = 64 * 1024

/** Parse a size such as 65536, 64K, 4M, 1G (powers of 1024). */
export function parseSize(text: string, what: string): number {
  const m = /^(\d+)\s*([KMGT]i?B?|B)?$/i.exec(text.trim())
  if (!m) throw new UsageError(`${what} "${text}" is not a size`, 'use bytes or a suffix: 64K, 4M, 1G')
  const unit = (m[2] ?? '').toUpperCase()[0]
  const mult = unit === 'K' ? 1024 : unit === 'M' ? 1024 ** 2 : unit === 'G' ? 1024 ** 3 : unit === 'T' ? 1024 ** 4 : 1
  return Number(m[1]) * mult
}

export function validateExtentSize(size: number): void {
  if (!Number.isInteger(size) || size < MIN_EXTENT || size > MAX_EXTENT || (size & (size - 1)) !== 0)
    throw new UsageError(`extent size ${size} is out of range (4K..64M) or not a power of 2`, 'pass --extent-size with a power of two between 4K and 64M, e.g. 64K')
}

export interface CreateGroupOptions {
  name: string
  sourcePath: string
  extentSize?: number
}

/** Create a clone group for a source volume. Refuses a source already used by any group. */
export async function createGroup(ctx: GroupContext, o: CreateGroupOptions): Promise<GroupRecord> {
  validateName('group', o.name)
  const extentSize = o.extentSize ?? DEFAULT_EXTENT
  validateExtentSize(extentSize)
  if (await ctx.store.exists(o.name)) throw new RefusedError(`clone group ${o.name} already exists`, `pick another name, or see it with \`clonectl status ${o.name}\``)
  // Hosts reach the source through clonectl (serve), so it must be local; clones may be remote.
  if (isNbdUri(o.sourcePath)) throw new UsageError(`the source ${o.sourcePath} is an NBD URI; a group's source must be a local image file or block device`, `name a local source; NBD URIs are for clones (\`clonectl clone add ${o.name} CLONE --path nbd://…\` once the group exists)`)
  const src = await openVolume(ctx.fs, o.sourcePath, {write: false}).catch((error: unknown) => {
    if (error instanceof NotFoundError) throw new NotFoundError(`source ${o.sourcePath} does not exist`, 'check the --source path: a group\'s source is an existing image file or block device')
    throw error
  })
  try {
    if (src.size === 0) throw new RefusedError(`source ${o.sourcePath} is empty (0 bytes)`)
    // One volume joins a group at a time across all groups: a racing create or add cannot also find it unused.
    return await ctx.store.withCreationLock(`clonectl group create ${o.name}`, async () => createUnderLock(ctx, o, extentSize, src))
  } finally {
    await src.close()
  }
}

async function createUnderLock(ctx: GroupContext, o: CreateGroupOptions, extentSize: number, src: Volume): Promise<GroupRecord> {
  if (await ctx.store.exists(o.name)) throw new RefusedError(`clone group ${o.name} already exists`, `pick another name, or see it with \`clonectl status ${o.name}\``)
  for (const used of await ctx.store.allClonePaths({onDamaged: (d) => warnDamaged(ctx, d)})) {
    await checkCloneCandidate(ctx.fs, used.path, o.sourcePath, []).catch((error: unknown) => {
      if (error instanceof RefusedError)
        throw new RefusedError(`source ${o.sourcePath} is already used by group ${used.group} (${used.clone === '(source)' ? 'as its source' : `as clone ${used.clone}`}, ${used.path})`, 'a volume belongs to one group only')
      if (!(error instanceof NotFoundError)) throw error
    })
  }
  const record: GroupRecord = {
    formatVersion: 1,
    name: o.name,
    extentSize,
    createdAt: new Date().toISOString(),
    source: {path: o.sourcePath, fingerprint: await src.fingerprint()},
    clones: [],
  }
  await ctx.store.create(record)
  return record
}

/** A damaged group's volumes cannot be checked against: say so, and go on (it must not block the others). */
export function warnDamaged(ctx: GroupContext, d: DamagedGroup): void {
  ctx.warn?.(`group ${d.name} is damaged (${d.reason}); its volumes cannot be checked against this one: fix or destroy it (\`clonectl group destroy ${d.name} --force\`)`)
}

export interface AddCloneOptions {
  clone: string
  path: string
  /** Make a sparse image of the source's size at path (it must not exist). */
  create?: boolean
}

/**
 * Add a clone to an open group: refuse the source under another name, a volume used by any
 * group, a clone smaller than the source. Its map starts all set: the first sync is full.
 */
export async function addClone(g: CloneGroup, o: AddCloneOptions): Promise<CloneRecord> {
  validateName('clone', o.clone)
  if (g.members.has(o.clone)) throw new RefusedError(`group ${g.name} already has a clone named ${o.clone}`, 'pick another name, or remove it first')
  if (g.record.operation) throw new StateError(`group ${g.name} has an interrupted ${g.record.operation.kind}`, `finish it first (\`clonectl ${g.record.operation.kind === 'restore' ? 'restore' : 'clone sync'} ${g.name}${g.record.operation.kind === 'sync' ? ` ${g.record.operation.clone}` : ''}\`)`)
  const {ctx} = g
  if (o.create && isNbdUri(o.path)) throw new UsageError(`--create makes a local sparse image; ${o.path} is an NBD remote`, 'create the export on the remote system (e.g. `qemu-img create -f raw`), then add it without --create')
  // One volume joins a group at a time across all groups: a racing add or create cannot also find it unused.
  return ctx.store.withCreationLock(`clonectl clone add ${g.name} ${o.clone}`, async () => addUnderLock(g, o))
}

async function addUnderLock(g: CloneGroup, o: AddCloneOptions): Promise<CloneRecord> {
  const {ctx} = g
  const used = await ctx.store.allClonePaths({onDamaged: (d) => warnDamaged(ctx, d)})
  let created = false
  try {
    return await addChecked(g, o, used, () => {
      created = true
    })
  } catch (error) {
    // The image --create made is ours: a clone that was not added leaves nothing behind.
    if (created) await ctx.fs.unlink(o.path).catch(() => undefined)
    throw error
  }
}

async function addChecked(g: CloneGroup, o: AddCloneOptions, used: VolumeUse[], onCreated: () => void): Promise<CloneRecord> {
  const {ctx} = g
  if (o.create) {
    if (await ctx.fs.exists(o.path)) throw new RefusedError(`${o.path} already exists; --create makes a new image and never overwrites one`, 'drop --create to use it as the clone, or pick a new path')
    await checkCloneCandidate(ctx.fs, g.record.source.path, o.path, used).catch((error: unknown) => {
      if (!(error instanceof NotFoundError)) throw error
    })
    await FileVolume.createSparse(ctx.fs, o.path, g.volumeSize)
    onCreated()
  } else {
    await checkCloneCandidate(ctx.fs, g.record.source.path, o.path, used)
  }
  // Reaching a remote can take up to its connect timeout: say so when it is not quick.
  const endWait = isNbdUri(o.path) ? ctx.waiting?.(`connecting to ${o.path}`, 1000) : undefined
  const vol = await openVolume(ctx.fs, o.path, {write: true}).finally(() => endWait?.())
  try {
    // RemoteVolume only for a remote (openVolume loaded it then): importing it here loaded the NBD
    // client and node:tls for every command that takes a group (a no-op clone sync: ~4 ms).
    if (isNbdUri(o.path)) {
      const {RemoteVolume} = await import('../volume/RemoteVolume.js')
      if (vol instanceof RemoteVolume && vol.description !== undefined) await refuseOwnExport(ctx, g.name, o.path, vol.description)
    }
    if (vol.readOnly) throw new RefusedError(`clone ${o.path} is read-only (its NBD server exports it read-only)`, 'export it writable (qemu-nbd without --read-only, nbdkit without -r), or choose another volume')
    checkCloneSize(g.record.source.path, g.volumeSize, o.path, vol.size)
    if (o.create) vol.knownZero = true
    const now = new Date().toISOString()
    const record: CloneRecord = {
      name: o.clone,
      volume: {path: o.path, fingerprint: await vol.fingerprint()},
      ...NEW_CLONE,
      mapFile: mapFileName(o.clone),
      createdAt: now,
      trusted: true,
    }
    const m = await g.addMember(record, vol, 'all').catch((error: unknown) => {
      throw stateWriteError(ctx.store.stateDir, g.maps.path(record.mapFile), error)
    })
    try {
      await g.save()
    } catch (error) {
      // Not recorded (a full state file system, EMFILE): no effect; nothing of the clone stays, in
      // memory or on disk (a serve keeps no clone that group.json does not list).
      g.members.delete(o.clone)
      await g.maps.deleteDelta(m.map).catch(() => undefined)
      throw error
    }
    return record
  } catch (error) {
    await vol.close()
    throw error
  }
}

export interface FractureResult {
  clone: string
  state: string
  alreadyFractured: boolean
  fracturedAt?: string
}

/**
 * Fracture clones: stop mirroring; from now on their delta maps record host writes. The
 * caller runs this inside the host gate under `serve`, so each write is either wholly in the
 * point-in-time copy or recorded in the map. Flushes the clones before recording the state.
 */
export async function fractureClones(g: CloneGroup, names: string[]): Promise<FractureResult[]> {
  const out: FractureResult[] = []
  const members = names.map((n) => g.member(n))
  for (const m of members) {
    if (m.state === 'fractured') {
      out.push({clone: m.name, state: m.state, alreadyFractured: true, fracturedAt: m.record.lastFractureAt})
      continue
    }
    if (m.state !== 'synchronized')
      throw new StateError(
        `clone ${m.name} is ${m.state}, not a consistent copy to fracture`,
        m.state === 'restoring' || m.state === 'reverse-syncing' ? `wait for the restore to finish, or resume an interrupted one with \`clonectl restore ${g.name}\`` : `sync it first: \`clonectl clone sync ${g.name} ${m.name}\``,
      )
  }
  const now = new Date().toISOString()
  const flushing: Array<Promise<void>> = []
  const undo = g.snapshotMembersForUndo(members.filter((m) => m.state === 'synchronized'))
  for (const m of members) {
    if (m.state !== 'synchronized') continue
    // Under the host gate: no mirrored write in flight, so every write-intent bit is equal data.
    m.sweepIntent(0, true)
    m.apply('fracture', {at: now})
    flushing.push(m.vol.flush())
    out.push({clone: m.name, state: 'fractured', alreadyFractured: false, fracturedAt: now})
  }
  try {
    await Promise.all(flushing)
    await g.checkpoint()
    await g.save()
  } catch (error) {
    // The caller holds the host gate (serve) or is alone (offline): no host write came in
    // since the states changed, so the clones are still exact mirrors. Undone, the fracture
    // has had no effect, and the error says so; never a clone fractured in memory only.
    undo()
    throw error
  }
  return out
}

/** Remove a clone from the group: its record and map go; its volume is never touched. */
export async function removeClone(g: CloneGroup, name: string): Promise<{clone: string; path: string}> {
  const m = g.member(name)
  if (g.record.operation?.clone === name)
    throw new StateError(`clone ${name} has an interrupted ${g.record.operation.kind}`, g.record.operation.kind === 'restore' ? `finish it with \`clonectl restore ${g.name}\`` : `finish it with \`clonectl clone sync ${g.name} ${name}\` first`)
  const order = [...g.members.entries()]
  g.members.delete(name)
  try {
    await g.save()
  } catch (error) {
    // Still recorded: the clone stays, as it was (no effect).
    g.members.clear()
    for (const [k, v] of order) g.members.set(k, v)
    throw error
  }
  await m.volume?.close()
  m.volume = undefined
  await g.maps.deleteDelta(m.map)
  return {clone: name, path: m.record.volume.path}
}

export interface DestroyOptions {
  /** Destroy even though clones exist (their volumes are kept). */
  force: boolean
  /**
   * Destroy even though a restore is recorded: the source stays partly restored and nothing
   * can resume the restore. --force alone never implies this.
   */
  discardRestore?: boolean
}

/**
 * Destroy a group's state (never volume data). Refuses while clones exist unless force, and
 * while a restore is recorded unless discardRestore: destroying it would leave the source a
 * mix of restored and pre-restore extents that nothing could resume.
 */
export async function destroyGroup(ctx: GroupContext, name: string, o: DestroyOptions): Promise<{group: string; clones: number}> {
  const record = await ctx.store.load(name)
  if (record.clones.length > 0 && !o.force)
    throw new RefusedError(`group ${name} still has ${record.clones.length} clone(s): ${record.clones.map((c) => c.name).join(', ')}`, 'remove them first, or pass --force (volume data is never touched)')
  const op = record.operation
  if (op?.kind === 'restore' && !o.discardRestore) throw interruptedRestoreError(name, record.source.path, `${op.protected === false ? 'an unprotected' : 'a protected'} restore from clone ${op.clone} (started ${op.startedAt})`)
  await ctx.store.destroy(name)
  return {group: name, clones: record.clones.length}
}

/**
 * Destroy the state of a group whose group.json is damaged (so no record says what it held):
 * under its lock, its own files go (never volume data, never a file clonectl did not make).
 * A P file left means a protected restore was running, so the source may be partly
 * restored: refused unless discardRestore, as for a readable record. Waits.
 */
export async function destroyDamagedGroup(ctx: GroupContext, name: string, o: DestroyOptions & {command: string; waitSeconds?: number}): Promise<{group: string; clones: number}> {
  const lock = await GroupLock.acquire({
    groupDir: ctx.store.groupDir(name),
    group: name,
    command: o.command,
    waitSeconds: o.waitSeconds,
    onCompromised: () => undefined,
  })
  try {
    if (!o.discardRestore && (await GroupMaps.hasP(ctx.fs, ctx.store, name))) throw interruptedRestoreError(name, 'named in its damaged group.json', 'a protected restore map (P)')
    await ctx.store.destroy(name)
  } finally {
    await lock.release().catch(() => undefined)
  }
  return {group: name, clones: 0}
}

/** The refusal to destroy a group whose source a restore has only partly rewritten. */
function interruptedRestoreError(group: string, source: string, what: string): StateError {
  return new StateError(
    `group ${group} has ${what} that has not finished: its source ${source} is partly restored (extents not yet copied still hold pre-restore data), and destroying the group discards the record so nothing can resume it`,
    `finish it with \`clonectl restore ${group}\`, or pass --discard-restore to destroy the group anyway and leave the source partly restored`,
  )
}

/**
 * After the lock is taken: a sync recorded in group.json belongs to a dead process, so its
 * clone is out-of-sync (map intact); a P file with no restore recorded is a leftover of a
 * restore that ended (or never began) and is removed.
 */
export async function recoverStale(g: CloneGroup): Promise<void> {
  const op = g.record.operation
  if (op?.kind === 'sync') {
    const m = g.members.get(op.clone)
    if (m) m.apply('sync-stop', {reason: 'the sync was interrupted'})
    else dropOperation(g.record)
    await g.save()
  }
  if (!g.record.operation) await g.maps.removeLeftoverP()
}

/** A URI that reaches a group's own `serve` export is that group's source under another name. */
async function refuseOwnExport(ctx: GroupContext, group: string, uri: string, description: string): Promise<void> {
  for (const name of await ctx.store.list()) {
    const r = await ctx.store.load(name).catch(() => undefined)
    if (r && exportDescription(r) === description)
      throw new RefusedError(
        `clone ${uri} is the source of group ${name}${name === group ? ' under another name' : ', already used by that group'} (it reaches that group's clonectl serve export)`,
        name === group ? 'name a different volume for the clone' : 'a volume belongs to one group only; name a different volume',
      )
  }
}

/**
 * The export's NBD description: names the group and when it was made, so `clone add` can
 * tell that a URI reaches a group's own source (the source under another name).
 */
export function exportDescription(record: {name: string; createdAt: string}): string {
  return `clonectl group ${record.name} source (created ${record.createdAt})`
}
