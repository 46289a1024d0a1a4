import {execFile} from 'node:child_process'
import {createHash, randomBytes} from 'node:crypto'
import {mkdir, mkdtemp, open, rm, writeFile} from 'node:fs/promises'
import {tmpdir} from 'node:os'
import {join, resolve} from 'node:path'
import {promisify} from 'node:util'
import {controlRequest, findServer} from '../control/ControlClient.js'
import {DrillFailedError, RefusedError, StateError, UsageError} from '../errors/errors.js'
import {HostIO} from '../engine/HostIO.js'
import {RestoreSession} from '../engine/Restore.js'
import {SyncEngine} from '../engine/SyncEngine.js'
import {Scoreboard} from '../engine/Scoreboard.js'
import {ExtentBitmap} from '../map/ExtentBitmap.js'
import {mulberry32} from '../io/prng.js'
import {GroupStore} from '../store/GroupStore.js'
import {ensureStateDir} from '../store/stateDir.js'
import {FileVolume} from '../volume/FileVolume.js'
import {readForCompare} from '../volume/holes.js'
import {checkCloneCandidate} from '../volume/identity.js'
import {openVolume} from '../volume/openVolume.js'
import type {Volume} from '../volume/Volume.js'
import {CloneGroup, type GroupContext} from './CloneGroup.js'
import {addClone, createGroup, fractureClones} from './GroupAdmin.js'
import {withGroup} from './GroupSession.js'
import {ForwardSync} from '../engine/ForwardSync.js'

const run = promisify(execFile)

export interface DrillCheck {
  name: string
  ok: boolean
  detail: string
}

export interface DrillReport {
  kind: 'scratch' | 'group'
  dir?: string
  kept: boolean
  content: 'ext4' | 'random' | 'clone'
  sizeBytes: number
  /** From the restore's start to the first host read answered (COD included). */
  timeToFirstHostIoMs?: number
  restoreMs: number
  throughputMBps: number
  codCopies: number
  bytesCopied: number
  hostReads: number
  hostWrites: number
  checks: DrillCheck[]
  ok: boolean
}

/** Every read, compare and copy of whole volumes goes in chunks of this size (never the whole volume at once). */
const CHUNK = 4 * 1024 * 1024
const MiB = 1024 * 1024
/** The smallest scratch drill: the ext4 source holds ~6.5 MB of files plus its metadata. */
export const MIN_DRILL_SIZE = 16 * MiB

async function sha256(v: Volume): Promise<string> {
  const h = createHash('sha256')
  for (let off = 0; off < v.size; off += CHUNK) {
    h.update(await v.read(off, Math.min(CHUNK, v.size - off)))
  }
  return h.digest('hex')
}

/**
 * What the source must hold after the drill's restore: the clone, plus the workload's writes,
 * kept per extent (only extents the workload wrote are held in memory).
 */
class ExpectedSource {
  private readonly written = new Map<number, Buffer>()
  constructor(
    private readonly clone: Volume,
    private readonly extent: number,
    private readonly size: number,
  ) {}

  private async extentOf(e: number): Promise<Buffer> {
    const have = this.written.get(e)
    if (have) return have
    const a = e * this.extent
    const b = Buffer.from(await this.clone.read(a, Math.min(this.extent, this.size - a)))
    this.written.set(e, b)
    return b
  }

  async write(off: number, data: Uint8Array): Promise<void> {
    for (let p = off; p < off + data.length; ) {
      const e = Math.floor(p / this.extent)
      const end = Math.min(off + data.length, (e + 1) * this.extent)
      const buf = await this.extentOf(e)
      buf.set(data.subarray(p - off, end - off), p - e * this.extent)
      p = end
    }
  }

  /** The expected bytes [off, off + len): the clone's, with the workload's writes laid over. */
  async read(off: number, len: number): Promise<Buffer> {
    const out = Buffer.from(await this.clone.read(off, len))
    const first = Math.floor(off / this.extent)
    const last = Math.floor((off + len - 1) / this.extent)
    for (let e = first; e <= last; e++) {
      const w = this.written.get(e)
      if (!w) continue
      const a = Math.max(off, e * this.extent)
      const b = Math.min(off + len, e * this.extent + w.length)
      w.copy(out, a - off, a - e * this.extent, b - e * this.extent)
    }
    return out
  }
}

async function have(cmd: string): Promise<boolean> {
  try {
    await run('sh', ['-c', `command -v ${cmd}`])
    return true
  } catch {
    return false
  }
}

/** A source with real content: an ext4 file system (mke2fs -d) where e2fsprogs exists, random data otherwise. */
async function makeSource(dir: string, size: number): Promise<'ext4' | 'random'> {
  const img = join(dir, 'source.img')
  if (await have('mke2fs')) {
    const tree = join(dir, 'tree')
    await mkdir(join(tree, 'db'), {recursive: true})
    for (let i = 0; i < 24; i++) await writeFile(join(tree, 'db', `table${i}.dat`), randomBytes(256 * 1024 + i * 1000))
    await writeFile(join(tree, 'README'), 'clonectl recovery drill\n')
    try {
      await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', tree, img, `${Math.floor(size / 1024)}k`])
    } catch (error) {
      const e = error as {code?: number; stderr?: string}
      throw new DrillFailedError(`mke2fs could not make the drill's ${size}-byte ext4 source (exit ${e.code ?? '?'}): ${(e.stderr ?? String(error)).trim().split('\n')[0]}`, 'check e2fsprogs (`mke2fs -V`) and the free space in $TMPDIR, then run the drill again')
    }
    await rm(tree, {recursive: true, force: true})
    return 'ext4'
  }
  // In chunks: one buffer of the whole size would not fit in memory at any size.
  const f = await open(img, 'w')
  try {
    for (let off = 0; off < size; off += CHUNK) await f.write(randomBytes(Math.min(CHUNK, size - off)), 0, undefined, off)
  } finally {
    await f.close()
  }
  return 'random'
}


export interface ScratchDrillOptions {
  keep?: boolean
  sizeBytes?: number
  seed?: number
  log?: (m: string) => void
}

/**
 * The self-contained drill: scratch images in a temp dir, a clone synced and fractured, the
 * source damaged through the host path, a protected restore while an in-process workload
 * reads and writes, then checks against a byte model. Throws DrillFailedError (with the
 * report) when any check fails. Waits.
 */
export async function scratchDrill(o: ScratchDrillOptions = {}): Promise<DrillReport> {
  const size = o.sizeBytes ?? 64 * MiB
  // Refused before any scratch file exists (mke2fs would fail on a smaller image).
  if (!Number.isSafeInteger(size) || size < MIN_DRILL_SIZE || size % MiB !== 0)
    throw new UsageError(`drill size ${size} bytes is too small or not whole MiB: a scratch drill needs at least ${MIN_DRILL_SIZE / MiB} MiB`, `pass --size ${MIN_DRILL_SIZE / MiB}M or more, in whole MiB (e.g. --size 64M)`)
  const dir = await mkdtemp(join(tmpdir(), 'clonectl-drill-'))
  const log = o.log ?? (() => undefined)
  const random = mulberry32(o.seed ?? Date.now())
  try {
    const {nodeFs} = await import('../io/NodeDurableFs.js')
    const state = join(dir, 'state')
    await ensureStateDir(nodeFs, state)
    const ctx: GroupContext = {fs: nodeFs, store: new GroupStore(nodeFs, state)}
    const content = await makeSource(dir, size)
    log(`drill: ${content} source of ${size} bytes in ${dir}`)
    await createGroup(ctx, {name: 'drill', sourcePath: join(dir, 'source.img'), extentSize: 64 * 1024})
    const cloneHash = await withGroup(ctx, 'drill', {command: 'clonectl drill'}, async (g) => {
      await addClone(g, {clone: 'golden', path: join(dir, 'golden.img'), create: true})
      const fs = await ForwardSync.start(g, {clone: 'golden', command: 'clonectl drill'})
      if (fs instanceof ForwardSync) await fs.run()
      await fractureClones(g, ['golden'])
      return sha256(g.member('golden').vol)
    })
    log('drill: clone synced and fractured')

    return await withGroup(ctx, 'drill', {command: 'clonectl drill', open: {writable: true, readOnlyClones: ['golden']}}, async (g) => {
      const host = new HostIO(g)
      const extent = g.extentSize
      // Damage: a tenth of the extents overwritten through the host path (an application gone bad).
      for (let i = 0; i < Math.floor(g.extentCount / 10); i++) {
        const e = Math.floor(random() * g.extentCount)
        const junk = randomBytes(extent)
        await host.write(e * extent, junk, false)
      }
      await host.flush()
      // What the source must hold after the restore: the clone, plus the workload's writes.
      const golden = g.member('golden').vol
      const model = new ExpectedSource(golden, extent, size)

      const t0 = performance.now()
      // Paced to last ~1.5 s, so the workload really runs against a restore in progress.
      const toCopy = g.member('golden').map.bits.countSet() * extent
      const rate = Math.max(1 << 20, Math.floor(toCopy / 1.5))
      const session = await host.gate.exclusive(() => RestoreSession.start(g, {clone: 'golden', protected: true, rate, command: 'clonectl drill'}))
      host.restore = session
      let firstIo: number | undefined
      let reads = 0
      let writes = 0
      const mismatches: string[] = []
      const restore = session.run()
      let running = true
      void restore.finally(() => {
        running = false
      })
      const workload = (async () => {
        let n = 0
        while (running || n < 64) {
          const off = Math.floor(random() * (size - 65536))
          const len = 512 * (1 + Math.floor(random() * 128))
          if (random() < 0.7) {
            const got = await host.read(off, len)
            firstIo ??= performance.now() - t0
            reads++
            if (!got.equals(await model.read(off, len))) mismatches.push(`read at ${off}+${len}`)
          } else {
            const data = randomBytes(len)
            await host.write(off, data, random() < 0.1)
            await model.write(off, data)
            writes++
          }
          n++
          if (n % 50 === 0) {
            await host.flush()
            await new Promise((r) => setImmediate(r))
          }
        }
      })()
      const [complete] = await Promise.all([restore, workload])
      if (!complete) throw new StateError('the drill restore stopped before completing')
      await host.gate.exclusive(() => session.finish())
      host.restore = undefined
      const restoreMs = performance.now() - t0
      const summary = session.summary(true)
      log(`drill: restore completed in ${restoreMs.toFixed(0)} ms`)

      const checks: DrillCheck[] = []
      checks.push({name: 'host reads saw restored or newly written data', ok: mismatches.length === 0, detail: mismatches.length ? `${mismatches.length} mismatches, first ${mismatches[0]}` : `${reads} reads`})
      // One pass in chunks: the source against the model, and against the clone where D is clear.
      const D = g.member('golden').map.bits
      let sourceDiffers = 0
      let uncovered = 0
      for (let off = 0; off < size; off += CHUNK) {
        const n = Math.min(CHUNK, size - off)
        const [final, want, c] = await Promise.all([g.src.read(off, n), model.read(off, n), golden.read(off, n)])
        if (!final.equals(want)) sourceDiffers++
        for (let a = 0; a < n; a += extent) {
          const b = Math.min(a + extent, n)
          if (final.compare(c, a, b, a, b) !== 0 && !D.get((off + a) / extent)) uncovered++
        }
      }
      checks.push({name: 'source equals clone + writes made during the restore', ok: sourceDiffers === 0, detail: sourceDiffers === 0 ? 'byte for byte' : `${sourceDiffers} chunks of ${CHUNK / MiB} MiB differ`})
      const after = await sha256(golden)
      checks.push({name: 'clone unchanged (sha256)', ok: after === cloneHash, detail: after.slice(0, 16)})
      checks.push({name: "clone's delta map covers every difference", ok: uncovered === 0, detail: `${D.countSet()} extents marked, ${uncovered} uncovered`})
      if (content === 'ext4' && (await have('e2fsck'))) {
        try {
          await run('e2fsck', ['-fn', golden.path])
          checks.push({name: 'e2fsck -fn of the clone', ok: true, detail: 'clean'})
        } catch (error) {
          checks.push({name: 'e2fsck -fn of the clone', ok: false, detail: String((error as {stdout?: string}).stdout ?? error).split('\n')[0]})
        }
      }
      const report: DrillReport = {
        kind: 'scratch',
        dir: o.keep ? dir : undefined,
        kept: Boolean(o.keep),
        content,
        sizeBytes: size,
        timeToFirstHostIoMs: firstIo,
        restoreMs,
        throughputMBps: summary.copiedBytes / 1e6 / (restoreMs / 1000),
        codCopies: summary.codCopies,
        bytesCopied: summary.copiedBytes,
        hostReads: reads,
        hostWrites: writes,
        checks,
        ok: checks.every((x) => x.ok),
      }
      return report
    })
  } finally {
    if (!o.keep) await rm(dir, {recursive: true, force: true})
  }
}

export interface GroupDrillOptions {
  group: string
  clone: string
  target: string
  exec?: string
  command: string
  waitSeconds?: number
  force?: boolean
  log?: (m: string) => void
  /** Asked before an existing target is overwritten (it may be a file someone needs); throws to refuse. */
  confirmOverwrite?: (target: string) => Promise<void>
}

/**
 * Drill a real group without touching its source: copy the clone into a scratch target (a
 * restore rehearsal), check the target against the clone, run CMD with {} replaced by the
 * target. When `serve` owns the group (the recommended setup), serve does the copy and the
 * check between host requests; otherwise this process does it under the group lock, so the
 * clone cannot change meanwhile. --exec runs here either way, in the caller's environment.
 * Same report both ways. Waits.
 */
export async function groupDrill(ctx: GroupContext, o: GroupDrillOptions): Promise<DrillReport> {
  const record = await ctx.store.load(o.group) // NotFoundError before anything else
  // serve runs elsewhere (systemd: cwd /): it is told the target's absolute path.
  const req = {op: 'drill' as const, clone: o.clone, target: resolve(o.target), force: o.force}
  if (await ctx.fs.exists(req.target)) {
    // An existing target is overwritten whole: first the checks that name why it can never be
    // one (a volume of a group), then consent (last night's target, or a file someone needs?).
    await checkCloneCandidate(ctx.fs, record.source.path, req.target, await ctx.store.allClonePaths(), 'drill target')
    await o.confirmOverwrite?.(req.target)
  }
  const sock = await findServer(ctx.fs, ctx.store.groupDir(o.group))
  const report = sock
    ? await controlRequest<DrillReport>(sock, req, {onLog: (m) => o.log?.(m)})
    : await withGroup(ctx, o.group, {command: o.command, waitSeconds: o.waitSeconds, open: {writable: false}}, (g) => drillCopy(g, {...req, log: o.log}))
  if (o.exec) {
    report.checks.push(await execCheck(o.exec, req.target))
    report.ok = report.checks.every((x) => x.ok)
  }
  return report
}

export interface DrillCopyOptions {
  clone: string
  /** Absolute path of the scratch target. */
  target: string
  force?: boolean
  log?: (m: string) => void
}

/**
 * The copy and check of a group drill on a group already open, by its owner (this process
 * under the lock, or serve): copy the clone into the target (created sparse if missing; never
 * a volume of any group), then compare them. The caller sees to it that nothing writes the
 * clone meanwhile. Waits.
 */
export async function drillCopy(g: CloneGroup, o: DrillCopyOptions): Promise<DrillReport> {
  const {ctx} = g
  const m = g.member(o.clone)
  if (m.state !== 'fractured' && m.state !== 'synchronized' && !o.force)
    throw new StateError(`clone ${m.name} is ${m.state}, not a point-in-time copy to drill`, 'sync and fracture it first, or pass --force')
  const used = await ctx.store.allClonePaths()
  const exists = await ctx.fs.exists(o.target)
  if (exists) await checkCloneCandidate(ctx.fs, g.record.source.path, o.target, used, 'drill target')
  else await FileVolume.createSparse(ctx.fs, o.target, g.volumeSize)
  const target = await openVolume(ctx.fs, o.target, {write: true})
  try {
    if (target.size < g.volumeSize) throw new RefusedError(`target ${o.target} (${target.size} bytes) is smaller than the group's volumes (${g.volumeSize} bytes)`)
    if (!exists) target.knownZero = true
    const all = new ExtentBitmap(g.extentCount)
    all.setAll()
    const map = {bits: all, clear: (s: number, e: number) => all.clearRange(s, e)}
    const t0 = performance.now()
    const engine = new SyncEngine({map, from: m.vol, to: target, extentSize: g.extentSize, volumeSize: g.volumeSize, scoreboard: new Scoreboard()})
    await engine.run()
    await target.flush()
    const restoreMs = performance.now() - t0
    o.log?.(`drill: clone ${m.name} copied to ${o.target} in ${restoreMs.toFixed(0)} ms`)
    const checks: DrillCheck[] = []
    const chunk = 4 * 1024 * 1024
    let same = true
    for (let off = 0; off < g.volumeSize && same; off += chunk) {
      const n = Math.min(chunk, g.volumeSize - off)
      // Holes on both sides are equal unread: a sparse clone is checked at the cost of its data.
      const {a, b, bothZero} = await readForCompare(m.vol, target, off, n, g.extentSize)
      for (let x = 0; x * g.extentSize < n && same; x++) {
        const s = x * g.extentSize
        const t = Math.min(s + g.extentSize, n)
        same = bothZero(x) || a.compare(b, s, t, s, t) === 0
      }
    }
    checks.push({name: 'target equals the clone', ok: same, detail: same ? 'byte for byte' : 'differs'})
    return {
      kind: 'group',
      kept: true,
      content: 'clone',
      sizeBytes: g.volumeSize,
      restoreMs,
      throughputMBps: engine.progress.copiedBytes / 1e6 / (restoreMs / 1000),
      codCopies: 0,
      bytesCopied: engine.progress.copiedBytes,
      hostReads: 0,
      hostWrites: 0,
      checks,
      ok: checks.every((x) => x.ok),
    }
  } finally {
    await target.close()
  }
}

/** Run the drill's --exec with {} replaced by the (quoted) target path; its exit status is the check. */
async function execCheck(exec: string, target: string): Promise<DrillCheck> {
  const cmd = exec.replace(/\{\}/g, `'${target.replace(/'/g, "'\\''")}'`)
  try {
    const {stdout} = await run('sh', ['-c', cmd], {maxBuffer: 16 * 1024 * 1024})
    return {name: `exec: ${exec}`, ok: true, detail: stdout.trim().split('\n').slice(-1)[0] ?? ''}
  } catch (error) {
    const e = error as {code?: number; stdout?: string; stderr?: string}
    return {name: `exec: ${exec}`, ok: false, detail: `exit ${e.code ?? '?'}: ${(e.stderr || e.stdout || '').trim().split('\n')[0] ?? ''}`}
  }
}

export function assertDrill(r: DrillReport): void {
  if (!r.ok) {
    const bad = r.checks.filter((c) => !c.ok)
    // --keep is the self-contained drill's; a group drill leaves its --target as the restore made it.
    const fix = r.kind === 'scratch' ? 'keep the scratch files with --keep and inspect them, or report it' : 'the target is left as the restore made it: inspect it, or run the failed check on it by hand'
    throw new DrillFailedError(`recovery drill failed: ${bad.map((c) => `${c.name} (${c.detail})`).join('; ')}`, fix)
  }
}

