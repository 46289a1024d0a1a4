/**
 * npm run bench [-- --quick]: clonectl side by side with the tools an administrator would
 * otherwise use (nbdcopy, dd, qemu-nbd, nbdkit), same files, same run, alternating, reported
 * as median ratios with pass marks. The full run writes BENCHMARKS.md and an SVG timeline of
 * host IOPS and restore progress during a protected restore. --quick shrinks everything so
 * the harness runs in CI in a few minutes (marks are printed, not enforced).
 */
import {closeSync, openSync, writeFileSync, readFileSync, existsSync, rmSync, writeSync} from 'node:fs'
import {randomBytes} from 'node:crypto'
import {cpus, totalmem, release, tmpdir} from 'node:os'
import {join} from 'node:path'
import {controlRequest} from '../src/control/ControlClient.js'
import {dirtyExtents} from './dirty.js'
import {mirrorRows} from './mirror.js'
import {allocatedBytes, background, bin, cacheDrops, clonectl, compare, compareAsync, fioAsync, freshDir, have, Qmp, repo, seedOrder, settle, sh, shuffled, stats, stop, timed, timedOutput, type FioResult, type Stats} from './harness.js'

const quick = process.argv.includes('--quick')
/**
 * Every process the bench starts runs without NODE_EXTRA_CA_CERTS and NODE_OPTIONS. Some
 * machines set the first (this project's VMs do, for a proxy): Node then parses the whole CA
 * bundle before running any script, which measured 44 ms here (`node -e 0` 22 ms without it,
 * 66 ms with it), paid by clonectl and `node -e 0` but by none of the C peers. A user's
 * machine rarely sets it, and with it the start-up row's ratio looked better than it is.
 */
const strippedEnv = ['NODE_EXTRA_CA_CERTS', 'NODE_OPTIONS'].filter((k) => process.env[k] !== undefined)
for (const k of strippedEnv) delete process.env[k]
/** The value after `--name`, if any. */
function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 ? process.argv[i + 1] : undefined
}
/**
 * --only ROW[,ROW]: run only these rows (startup, full, full-warm, incremental, incremental-16g, sparse,
 * sparse-tib, restore, remote, first-read, fio, memory, mirror), e.g. to profile one. incremental and
 * restore run on the full row's clone, made untimed when full is not selected. The full,
 * unfiltered run writes BENCHMARKS.md; `--only ROWS --update` at full size replaces those rows
 * in it, marked re-measured with the date and commit.
 */
const ROWS = ['startup', 'full', 'full-warm', 'incremental', 'incremental-16g', 'sparse', 'sparse-tib', 'restore', 'remote', 'first-read', 'fio', 'memory', 'mirror'] as const
const only = arg('only')?.split(',')
for (const r of only ?? []) if (!(ROWS as readonly string[]).includes(r)) throw new Error(`--only: unknown row ${r} (rows: ${ROWS.join(', ')})`)
const want = (r: (typeof ROWS)[number]): boolean => !only || only.includes(r)
const MiB = 1024 * 1024
const GiB = 1024 * MiB
/** --size MiB and --runs N override the copy rows' size and the runs per pair. */
const SIZE = arg('size') ? Number(arg('size')) * MiB : quick ? 128 * MiB : 2 * GiB
const RUNS = arg('runs') ? Number(arg('runs')) : quick ? 1 : 3
const FIO_SECONDS = quick ? 3 : 15
const base = freshDir(process.env.CLONECTL_BENCH_DIR ?? tmpdir(), 'clonectl-bench')
/** --seed N replays a run's random orders. */
const SEED = arg('seed') ? Number(arg('seed')) : Date.now() % 1_000_000_000
seedOrder(SEED)

interface Row {
  row: string
  clonectl: string
  peer: string
  ratio: number
  ratioText: string
  mark: string
  pass: boolean | undefined
  note?: string
}
const rows: Row[] = []
const commands: string[] = []
/** A command as a reader would type it: `clonectl`, no state directory, no local paths. */
function shown(cmd: string): string {
  return cmd
    .replaceAll(`node ${bin}`, 'clonectl')
    .replace(/ --state-dir=\S+/g, '')
    .replaceAll(`${base}/`, '')
    .replace(/(^|[\s'=])[\w.-]+\/(?=[\w.-]+\.(img|sock|qcow2)\b)/g, '$1')
}
function show(...cmds: string[]): void {
  for (const c of cmds) commands.push(shown(c))
}

function fmt(s: Stats, unit = 's', digits = 2): string {
  return `${s.median.toFixed(digits)} ${unit} (min ${s.min.toFixed(digits)}, max ${s.max.toFixed(digits)})`
}

let dropsFailedBefore = 0
function record(r: Row): void {
  // A row whose cache drops failed did not read cold: it says so, and claims no mark.
  const failed = cacheDrops.failed - dropsFailedBefore
  dropsFailedBefore = cacheDrops.failed
  if (failed > 0) {
    r.note = `${r.note ? `${r.note}; ` : ''}${failed} cache drop(s) failed: the runs did not read cold`
    r.pass = undefined
  }
  rows.push(r)
  const verdict = r.pass === undefined ? 'n/a' : r.pass ? 'PASS' : 'MISS'
  process.stdout.write(`${verdict.padEnd(4)} ${r.row}: clonectl ${r.clonectl} | ${r.peer} | ratio ${r.ratioText} (mark ${r.mark})${r.note ? ` — ${r.note}` : ''}\n`)
}

function skip(row: string, why: string): void {
  record({row, clonectl: '-', peer: '-', ratio: Number.NaN, ratioText: '-', mark: '-', pass: undefined, note: `skipped: ${why}`})
}

function makeRandom(path: string, size: number): void {
  sh(`head -c ${size} /dev/urandom > ${path}`)
}

function makeSparse(path: string, size: number, dataFraction: number): void {
  sh(`rm -f ${path}; truncate -s ${size} ${path}`)
  const blocks = size / MiB
  const n = Math.floor(blocks * dataFraction)
  const step = Math.floor(blocks / Math.max(n, 1))
  for (let i = 0; i < n; i++) sh(`dd if=/dev/urandom of=${path} bs=1M count=1 seek=${i * step} conv=notrunc status=none`)
}

// ---- rows ------------------------------------------------------------------------------

/**
 * Full sync into a remote clone: the same random file into the same qemu-nbd export (unix
 * socket, default cache), clonectl's `clone sync` against `nbdcopy --flush`, in random order.
 * Then an incremental sync with 1% of extents dirty, against the full one: whole commands,
 * as a cron job pays them (the syncs' own times beside, as a diagnostic).
 */
async function remoteRows(): Promise<void> {
  if (!have('qemu-nbd')) return skip('remote clone rows', 'install qemu-utils (qemu-nbd)')
  const dir = freshDir(base, 'remote')
  const src = join(dir, 'src.img')
  const exp = join(dir, 'export.img')
  const sock = join(dir, 'q.sock')
  makeRandom(src, SIZE)
  sh(`truncate -s ${SIZE} ${exp}`)
  const uri = `nbd+unix:///c?socket=${sock}`
  const q = await background(`qemu-nbd -f raw -t -x c -k ${sock} ${exp}`, sock)
  const state = join(dir, 'state')
  try {
    clonectl(state, `group create g --source ${src}`)
    const cmd = `node ${bin} clone sync g r`
    show(`qemu-nbd -f raw -t -x c -k ${sock} ${exp}`, `node ${bin} clone add g r --path '${uri}' --no-sync`, cmd, `nbdcopy --flush ${src} '${uri}'`)
    const own: number[] = []
    const r = compare(
      RUNS,
      {
        clonectl: () => {
          const t = timedOutput(`${cmd} --json --state-dir=${state}`)
          own.push(syncSeconds(t.stdout))
          return t.seconds
        },
        nbdcopy: () => timed(`nbdcopy --flush ${src} '${uri}'`),
      },
      (w) => {
        sh(`dd if=/dev/zero of=${exp} bs=1M count=1 conv=notrunc status=none`)
        if (w === 'clonectl') {
          sh(`node ${bin} clone remove g r --yes --state-dir=${state} >/dev/null 2>&1 || true`)
          clonectl(state, `clone add g r --path '${uri}' --no-sync`)
        }
      },
    )
    const ratio = r.nbdcopy.median / r.clonectl.median
    record({row: `full sync to a remote clone (qemu-nbd, unix socket), ${SIZE / MiB} MiB random`, clonectl: fmt(r.clonectl), peer: `nbdcopy --flush into the same export ${fmt(r.nbdcopy)}`, ratio, ratioText: `${ratio.toFixed(2)}× nbdcopy throughput`, mark: '≥ 0.8', pass: ratio >= 0.8})
    // Incremental: 1% of the extents changed (with dd, behind clonectl's back, so
    // `verify --repair` then makes the map exact and trusted), then a sync of just those.
    clonectl(state, `clone fracture g r`)
    const extents = SIZE / (64 * 1024)
    const n = Math.max(1, Math.floor(extents / 100))
    const inc: number[] = []
    const incOwn: number[] = []
    for (let i = 0; i < RUNS; i++) {
      for (let k = 0; k < n; k++) sh(`dd if=/dev/urandom of=${src} bs=64K count=1 seek=${Math.floor((k * extents) / n)} conv=notrunc status=none`)
      sh(`node ${bin} verify g r --repair --state-dir=${state} >/dev/null 2>&1 || true`)
      settle()
      const t = timedOutput(`${cmd} --json --state-dir=${state}`)
      inc.push(t.seconds)
      incOwn.push(syncSeconds(t.stdout))
      clonectl(state, `clone fracture g r`)
    }
    const ratio2 = stats(inc).median / r.clonectl.median
    const ownRatio = stats(incOwn).median / stats(own).median
    record({
      row: 'incremental sync to a remote clone, 1% of extents dirty (whole commands)',
      clonectl: `${fmt(stats(inc))}; the sync's own time ${fmt(stats(incOwn), 's', 3)}`,
      peer: `the full sync ${fmt(r.clonectl)}; its own time ${stats(own).median.toFixed(2)} s`,
      ratio: ratio2,
      ratioText: `${ratio2.toFixed(3)} of the full command (own times: ${ownRatio.toFixed(3)})`,
      mark: '≤ 0.05',
      pass: ratio2 <= 0.05,
    })
  } finally {
    await stop(q)
    rmSync(dir, {recursive: true, force: true})
  }
}

/** A sync's own time (SyncSummary.elapsedMs, in seconds) from a command's --json output. */
function syncSeconds(stdout: string): number {
  const out = JSON.parse(stdout) as {elapsedMs?: number; sync?: {elapsedMs: number}}
  const ms = out.sync?.elapsedMs ?? out.elapsedMs
  if (typeof ms !== 'number') throw new Error(`no elapsedMs in ${stdout.slice(0, 200)}`)
  return ms / 1000
}

/**
 * What the rows copying a source into a fresh image share: their directory and source,
 * clonectl's command (`clone add --create`, the whole command) and nbdcopy's into a fresh
 * sparse file (--target-is-zero, the knowledge --create gives clonectl), and the reset before
 * each run: a new group and no image for clonectl; an empty target (and no dd copy) for the
 * peers.
 */
function freshImageCopy(name: string, makeSource: (src: string) => void): {dir: string; src: string; state: string; cmd: string; nbdcopy: string; reset: (who: string) => void} {
  const dir = freshDir(base, name)
  const src = join(dir, 'src.img')
  makeSource(src)
  const state = join(dir, 'state')
  const reset = (who: string): void => {
    if (who === 'clonectl') {
      rmSync(state, {recursive: true, force: true})
      rmSync(join(dir, 'c.img'), {force: true})
      clonectl(state, `group create g --source ${src}`)
    } else sh(`rm -f ${dir}/nc.img ${dir}/dd.img; truncate -s ${SIZE} ${dir}/nc.img`)
  }
  return {dir, src, state, cmd: `node ${bin} clone add g c --path ${dir}/c.img --create`, nbdcopy: `nbdcopy --flush --target-is-zero ${src} ${dir}/nc.img`, reset}
}

/**
 * Full sync into a fresh image: clonectl's `clone add --create` (the whole command) against
 * nbdcopy into a fresh sparse file (told so: --target-is-zero, the knowledge --create gives
 * clonectl), dd as most would type it, and dd with O_DIRECT on both sides (as clonectl
 * copies), each run in random order within each round.
 */
function fullAndIncremental(): {state: string; dir: string; wall: number; own: number} {
  const {dir, src, state, cmd, nbdcopy, reset} = freshImageCopy('full', (p) => makeRandom(p, SIZE))
  const dd = `dd if=${src} of=${dir}/dd.img bs=4M conv=fdatasync status=none`
  const ddDirect = `dd if=${src} of=${dir}/dd.img bs=4M iflag=direct oflag=direct conv=fdatasync status=none`
  show(cmd, nbdcopy, dd, ddDirect)
  const own: number[] = []
  const r = compare(
    RUNS,
    {
      clonectl: () => {
        const t = timedOutput(`${cmd} --json --state-dir=${state}`)
        own.push(syncSeconds(t.stdout))
        return t.seconds
      },
      nbdcopy: () => timed(nbdcopy),
      dd: () => timed(dd),
      ddDirect: () => timed(ddDirect),
    },
    reset,
  )
  sh(`rm -f ${dir}/dd.img ${dir}/nc.img`)
  const ratio = r.nbdcopy.median / r.clonectl.median
  const ownMedian = stats(own).median
  record({
    row: `full sync, ${SIZE / MiB} MiB random`,
    clonectl: `${fmt(r.clonectl)} (the sync's own time ${ownMedian.toFixed(2)} s)`,
    peer: `nbdcopy --flush --target-is-zero ${fmt(r.nbdcopy)}; dd ${fmt(r.dd)}; dd iflag=direct oflag=direct ${fmt(r.ddDirect)}`,
    ratio,
    ratioText: `${ratio.toFixed(2)}× nbdcopy throughput, ${(r.dd.median / r.clonectl.median).toFixed(1)}× dd, ${(r.ddDirect.median / r.clonectl.median).toFixed(1)}× dd with O_DIRECT`,
    mark: '≥ 0.7',
    pass: ratio >= 0.7,
  })
  return {state, dir, wall: r.clonectl.median, own: ownMedian}
}

/**
 * The full sync again with the source in the page cache, as a volume in use often is (a
 * database's working set, an image just written): no cache drop between runs, the source
 * read whole before each (`cat > /dev/null`) and every earlier run's writes flushed (`sync`),
 * so no run pays for another's writeback. Peer: nbdcopy --flush --target-is-zero, under the
 * same conditions.
 */
function fullWarm(): void {
  const {dir, src, state, cmd, nbdcopy, reset} = freshImageCopy('full-warm', (p) => makeRandom(p, SIZE))
  show(`${cmd}   # source in the page cache`, nbdcopy)
  const r = compare(
    RUNS,
    {clonectl: () => timed(`${cmd} --state-dir=${state}`), nbdcopy: () => timed(nbdcopy)},
    (w) => {
      reset(w)
      sh(`sync; cat ${src} > /dev/null`)
    },
    {cold: false},
  )
  const ratio = r.nbdcopy.median / r.clonectl.median
  record({
    row: `full sync, ${SIZE / MiB} MiB random, source in the page cache`,
    clonectl: fmt(r.clonectl),
    peer: `nbdcopy --flush --target-is-zero ${fmt(r.nbdcopy)}`,
    ratio,
    ratioText: `${ratio.toFixed(2)}× nbdcopy throughput`,
    mark: '≥ 0.7',
    pass: ratio >= 0.7,
  })
  rmSync(dir, {recursive: true, force: true})
}

/** The full row's clone, one timed run of the whole command (for --only incremental/restore). */
function untimedFull(): {state: string; dir: string; wall: number; own: number} {
  const dir = freshDir(base, 'full')
  const src = join(dir, 'src.img')
  makeRandom(src, SIZE)
  const state = join(dir, 'state')
  clonectl(state, `group create g --source ${src}`)
  settle()
  const t = timedOutput(`node ${bin} clone add g c --path ${dir}/c.img --create --json --state-dir=${state}`)
  return {state, dir, wall: t.seconds, own: syncSeconds(t.stdout)}
}

/**
 * The incremental row compares whole commands, as a cron job pays them: `clone sync` after 1%
 * of extents were written through the host path, against the whole full sync. The syncs' own
 * times (SyncSummary.elapsedMs) are shown beside: the difference is the CLI's start-up and
 * the group's open, paid by every command.
 */
async function incremental(state: string, full: {wall: number; own: number}, size: number, row = 'incremental sync, 1% of extents dirty'): Promise<void> {
  const wall: number[] = []
  const own: number[] = []
  for (let i = 0; i < RUNS; i++) {
    clonectl(state, 'clone fracture g c')
    await dirtyExtents(state, 'g', 0.01, i + 7)
    settle()
    const t = timedOutput(`node ${bin} clone sync g c --json --state-dir=${state}`)
    wall.push(t.seconds)
    own.push(syncSeconds(t.stdout))
  }
  show(`node ${bin} clone sync g c --json   # ${size / MiB} MiB, after 1% of extents were written through the host path`)
  const w = stats(wall)
  const o = stats(own)
  const ratio = w.median / full.wall
  record({
    row: `${row}, ${size / MiB} MiB (whole commands)`,
    clonectl: `${fmt(w)}; the sync's own time ${fmt(o, 's', 3)}`,
    peer: `the full sync ${full.wall.toFixed(2)} s; its own time ${full.own.toFixed(2)} s`,
    ratio,
    ratioText: `${ratio.toFixed(3)} of the full command (own times: ${(o.median / full.own).toFixed(3)})`,
    mark: '≤ 0.05',
    pass: ratio <= 0.05,
  })
}

/**
 * The incremental row at 16 GiB (512 MiB with --quick), beside the 2 GiB one: a fixed cost
 * (start-up, opening the group) stays the same while the per-extent cost grows 8-fold. The
 * source is one random 2 GiB file repeated (the copy cannot tell). The full sync runs RUNS
 * times as a whole command.
 */
async function incrementalLarge(): Promise<void> {
  const size = quick ? 512 * MiB : 16 * GiB
  const dir = freshDir(base, 'inc-large')
  const src = join(dir, 'src.img')
  const part = Math.min(size, 2 * GiB)
  makeRandom(join(dir, 'part.img'), part)
  for (let done = 0; done < size; done += part) sh(`cat ${dir}/part.img >> ${src}`)
  rmSync(join(dir, 'part.img'))
  const state = join(dir, 'state')
  const wall: number[] = []
  const own: number[] = []
  for (let i = 0; i < RUNS; i++) {
    rmSync(state, {recursive: true, force: true})
    rmSync(join(dir, 'c.img'), {force: true})
    clonectl(state, `group create g --source ${src}`)
    settle()
    const t = timedOutput(`node ${bin} clone add g c --path ${dir}/c.img --create --json --state-dir=${state}`)
    wall.push(t.seconds)
    own.push(syncSeconds(t.stdout))
  }
  await incremental(state, {wall: stats(wall).median, own: stats(own).median}, size)
  rmSync(dir, {recursive: true, force: true})
}

/**
 * A source with 90% holes into a fresh image: clonectl's `clone add --create` against
 * nbdcopy into a fresh file (--target-is-zero) and dd with conv=sparse (it skips writing zero
 * blocks, as an expert copying a sparse image would run it), in random order each round.
 */
function sparse(): void {
  const {dir, src, state, cmd, nbdcopy, reset} = freshImageCopy('sparse', (p) => makeSparse(p, SIZE, 0.1))
  const dd = `dd if=${src} of=${dir}/dd.img bs=4M conv=sparse,fdatasync status=none`
  show(`${cmd}   # 90% holes`, nbdcopy, dd)
  const r = compare(
    RUNS,
    {
      clonectl: () => timed(`${cmd} --state-dir=${state}`),
      nbdcopy: () => timed(nbdcopy),
      dd: () => timed(dd),
    },
    reset,
  )
  const du = allocatedBytes(join(dir, 'c.img')) / allocatedBytes(src)
  const vsDd = r.dd.median / r.clonectl.median
  const vsNbd = r.nbdcopy.median / r.clonectl.median
  record({
    row: `sparse sync, ${SIZE / MiB} MiB with 90% holes`,
    clonectl: fmt(r.clonectl),
    peer: `dd conv=sparse,fdatasync ${fmt(r.dd)}; nbdcopy --target-is-zero ${fmt(r.nbdcopy)}`,
    ratio: vsNbd,
    ratioText: `${vsNbd.toFixed(2)}× nbdcopy, ${vsDd.toFixed(1)}× dd, clone du ${du.toFixed(2)}× source`,
    mark: '≥ 1.0× nbdcopy, ≥ 1× dd, du ≤ 1×',
    pass: vsNbd >= 1 && vsDd >= 1 && du <= 1.0001,
  })
  rmSync(dir, {recursive: true, force: true})
}

/**
 * Issue 16's "a 1 TiB source holding 1 GiB of data syncs within 2× the time of that 1 GiB
 * alone" (16 GiB holding 128 MiB with --quick): the same random data, once as a dense image of
 * its own size and once as 1 MiB pieces spread evenly over the large sparse image, each
 * copied by `clone add --create` (the whole command; the syncs' own times beside), in random
 * order each round. Mark: the large one's whole command within 2× the dense one's.
 */
function sparseTib(): void {
  const size = quick ? 16 * GiB : 1024 * GiB
  const data = quick ? 128 * MiB : GiB
  const dir = freshDir(base, 'sparse-tib')
  const big = join(dir, 'big.img')
  const dense = join(dir, 'dense.img')
  sh(`truncate -s ${size} ${big}`)
  const pieces = data / MiB
  const stride = size / pieces
  const piece = Buffer.alloc(MiB)
  const fb = openSync(big, 'r+')
  const fd = openSync(dense, 'w')
  try {
    for (let i = 0; i < pieces; i++) {
      randomBytes(MiB).copy(piece)
      writeSync(fb, piece, 0, MiB, i * stride)
      writeSync(fd, piece, 0, MiB, i * MiB)
    }
  } finally {
    closeSync(fb)
    closeSync(fd)
  }
  const own: Record<'big' | 'dense', number[]> = {big: [], dense: []}
  const run = (which: 'big' | 'dense'): number => {
    const t = timedOutput(`node ${bin} clone add ${which} c --path ${dir}/c-${which}.img --create --json --state-dir=${dir}/state`)
    own[which].push(syncSeconds(t.stdout))
    return t.seconds
  }
  const r = compare(RUNS, {big: () => run('big'), dense: () => run('dense')}, (w) => {
    rmSync(join(dir, 'state'), {recursive: true, force: true})
    rmSync(join(dir, `c-${w}.img`), {force: true})
    clonectl(join(dir, 'state'), `group create ${w} --source ${w === 'big' ? big : dense}`)
  })
  show(`node ${bin} clone add big c --path c-big.img --create   # ${size / GiB} GiB holding ${data / MiB} MiB in 1 MiB pieces`, `node ${bin} clone add dense c --path c-dense.img --create   # the same ${data / MiB} MiB alone`)
  const ratio = r.big.median / r.dense.median
  const ownRatio = stats(own.big).median / stats(own.dense).median
  record({
    row: `sparse sync, ${size / GiB} GiB holding ${data / MiB} MiB (whole commands)`,
    clonectl: `${fmt(r.big)}; the sync's own time ${fmt(stats(own.big), 's', 3)}`,
    peer: `the ${data / MiB} MiB alone ${fmt(r.dense)}; its own time ${fmt(stats(own.dense), 's', 3)}`,
    ratio,
    ratioText: `${ratio.toFixed(2)}× the ${data / MiB} MiB alone (own times: ${ownRatio.toFixed(2)}×)`,
    mark: '≤ 2×',
    pass: ratio <= 2,
  })
  rmSync(dir, {recursive: true, force: true})
}

/**
 * nbdcopy copies the clone over `peer.img`, a full (allocated) copy of the source: the same
 * work as copying it over the source, without changing the source behind clonectl's back.
 * (Copying over the source itself, as this row once did, made every later restore see a source
 * changed outside clonectl and rightly compare and copy every extent: the row then timed a
 * compare-restore of 2 GiB, not a restore of the dirty half.) Each round dirties half the
 * extents, then runs both in random order.
 */
async function protectedRestore(state: string, dir: string): Promise<void> {
  clonectl(state, 'clone fracture g c')
  sh(`cp ${dir}/src.img ${dir}/peer.img`)
  const times: Record<'clonectl' | 'nbdcopy', number[]> = {clonectl: [], nbdcopy: []}
  for (let i = 0; i < RUNS; i++) {
    await dirtyExtents(state, 'g', 0.5, 100 + i)
    for (const w of shuffled(['clonectl', 'nbdcopy'] as const)) {
      settle()
      if (w === 'clonectl') {
        const t = timedOutput(`node ${bin} restore g c --yes --json --state-dir=${state}`)
        if ((JSON.parse(t.stdout) as {compared?: boolean}).compared) throw new Error('the bench restore compared every extent: the source changed outside clonectl')
        times.clonectl.push(t.seconds)
      } else times.nbdcopy.push(timed(`nbdcopy --flush ${dir}/c.img ${dir}/peer.img`))
    }
  }
  sh(`rm -f ${dir}/peer.img`)
  show(`node ${bin} restore g c --yes   # 50% of extents written (scattered) since the fracture`, `nbdcopy --flush c.img peer.img   # peer.img: a full copy of the source`)
  const sa = stats(times.clonectl)
  const sb = stats(times.nbdcopy)
  const ratio = sa.median / sb.median
  record({row: `protected restore, ${SIZE / MiB} MiB, 50% of extents dirty`, clonectl: fmt(sa), peer: `nbdcopy of the whole clone ${fmt(sb)}`, ratio, ratioText: `${ratio.toFixed(2)} of its time`, mark: '≤ 0.75', pass: ratio <= 0.75})
}

async function serveGroup(state: string, group: string): Promise<{proc: Awaited<ReturnType<typeof background>>; uri: string}> {
  const sock = join(state, 'groups', group, 'nbd.sock')
  rmSync(sock, {force: true})
  const proc = await background(`node ${bin} serve ${group} --state-dir=${state}`, sock)
  await new Promise((r) => setTimeout(r, 200))
  return {proc, uri: `nbd+unix:///?socket=${sock}`}
}

/** A 4K read over NBD with qemu-io (process start included, as a host's first read would not be). */
function read4k(uri: string, at: string, pattern?: number): number {
  return timed(`qemu-io -f raw '${uri}' -c 'read ${pattern === undefined ? '' : `-P ${pattern} `}${at} 4k'`)
}

/**
 * QEMU's instant restore, the nearest peer: a qcow2 overlay on the clone, exported by
 * qemu-storage-daemon through a copy-on-read filter, with a block-stream job pulling the rest
 * of the clone into it. Returns [first read after the stream job started, same from the
 * daemon's start], in seconds.
 */
async function qemuFirstRead(dir: string, clone: string): Promise<[number, number]> {
  const ovl = join(dir, 'overlay.qcow2')
  const nbd = join(dir, 'qsd-nbd.sock')
  const qmpSock = join(dir, 'qsd-qmp.sock')
  sh(`rm -f ${ovl} ${nbd} ${qmpSock}; qemu-img create -q -f qcow2 -b ${clone} -F raw ${ovl}`)
  const t0 = performance.now()
  const proc = await background(
    `qemu-storage-daemon --blockdev driver=file,filename=${ovl},node-name=ovl-file --blockdev driver=qcow2,file=ovl-file,node-name=ovl ` +
      `--blockdev driver=copy-on-read,file=ovl,node-name=cor --nbd-server addr.type=unix,addr.path=${nbd} ` +
      `--export type=nbd,id=exp,node-name=cor,name=,writable=on --chardev socket,path=${qmpSock},server=on,wait=off,id=qmp --monitor chardev=qmp`,
    qmpSock,
  )
  try {
    const qmp = await Qmp.connect(qmpSock)
    try {
      await qmp.execute('block-stream', {'job-id': 'restore', device: 'ovl'})
      const t1 = performance.now()
      const uri = `nbd+unix:///?socket=${nbd}`
      read4k(uri, '40M', 0)
      const t2 = performance.now()
      return [(t2 - t1) / 1000, (t2 - t0) / 1000]
    } finally {
      qmp.close()
    }
  } finally {
    await stop(proc)
  }
}

/** Wait until the group's server reports an operation (the restore it was asked to run). */
async function waitForOperation(control: string): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    const s = (await controlRequest(control, {op: 'status'}).catch(() => ({}))) as {server?: {operation?: unknown}; operation?: unknown}
    if (s.server?.operation ?? s.operation) return
    await new Promise((r) => setTimeout(r, 10))
  }
  throw new Error('the server did not start the restore within 10 s')
}

/** Let a running restore finish unthrottled, and wait for its command to exit. */
async function finishRestore(control: string, restore: Awaited<ReturnType<typeof background>>): Promise<void> {
  await controlRequest(control, {op: 'rate', rate: 0}).catch(() => undefined)
  if (restore.exitCode === null) await new Promise((resolve) => restore.once('exit', resolve))
}

/**
 * The first host read that needs a copy on demand, once `restore` runs, RUNS times at each of
 * two sizes; "flat in size" is computed: the larger size's median within 2x the smaller's.
 */
async function firstRead(): Promise<void> {
  const sizes = quick ? [256 * MiB, GiB] : [GiB, 16 * GiB]
  const haveQsd = have('qemu-storage-daemon') && have('qemu-img')
  const ours: string[] = []
  const theirs: string[] = []
  const medians: number[] = []
  for (const size of sizes) {
    const dir = freshDir(base, `first-${size}`)
    const state = join(dir, 'state')
    const control = join(state, 'groups', 'g', 'control.sock')
    makeSparse(join(dir, 'src.img'), size, 0.001)
    clonectl(state, `group create g --source ${dir}/src.img`)
    clonectl(state, `clone add g c --path ${dir}/c.img --create`)
    clonectl(state, 'clone fracture g c')
    const {proc, uri} = await serveGroup(state, 'g')
    const lat: number[] = []
    const fromCli: number[] = []
    const idle: number[] = []
    try {
      for (let i = 0; i < RUNS; i++) {
        // Damage the first 64 MiB through the host path: what the first read after the restore needs.
        sh(`qemu-io -f raw '${uri}' -c 'write -P 0x5a 0 64M'`)
        idle.push(read4k(uri, '32M'))
        const t0 = performance.now()
        const restore = await background(`node ${bin} restore g c --yes --rate 50M --state-dir=${state}`, '/dev/null')
        try {
          await waitForOperation(control)
          const t1 = performance.now()
          const t = read4k(uri, '40M', 0)
          lat.push(t * 1000)
          fromCli.push((t1 - t0) / 1000 + t)
          await finishRestore(control, restore)
        } finally {
          await stop(restore)
        }
      }
    } finally {
      await stop(proc)
    }
    const m = stats(lat)
    medians.push(m.median)
    ours.push(`${size / GiB} GiB: ${fmt(m, 'ms', 0)}, ${(stats(fromCli).median * 1000).toFixed(0)} ms from \`restore\` started; idle read ${(stats(idle).median * 1000).toFixed(0)} ms`)
    if (haveQsd) {
      const q: number[] = []
      const qs: number[] = []
      try {
        for (let i = 0; i < RUNS; i++) {
          const [a, fromStart] = await qemuFirstRead(dir, join(dir, 'c.img'))
          q.push(a * 1000)
          qs.push(fromStart * 1000)
        }
        theirs.push(`${size / GiB} GiB: ${fmt(stats(q), 'ms', 0)}, ${stats(qs).median.toFixed(0)} ms from daemon start`)
      } catch (error) {
        theirs.push(`${size / GiB} GiB: failed (${(error as Error).message.split('\n')[0]})`)
      }
    }
    rmSync(dir, {recursive: true, force: true})
  }
  const ddDir = freshDir(base, 'first-dd')
  makeSparse(join(ddDir, 'c.img'), sizes[0], 0.001)
  const dd = compare(RUNS, {dd: () => timed(`dd if=${ddDir}/c.img of=${ddDir}/s.img bs=4M conv=fdatasync status=none`)}, () => sh(`rm -f ${ddDir}/s.img`)).dd
  rmSync(ddDir, {recursive: true, force: true})
  show(
    'clonectl serve g & clonectl restore g c --yes --rate 50M & qemu-io -c "read 40M 4k"   # timed: first read needing COD, once the server runs the restore',
    'qemu-img create -f qcow2 -b c.img -F raw overlay.qcow2; qemu-storage-daemon --blockdev qcow2 overlay → copy-on-read filter → NBD export; QMP block-stream; qemu-io -c "read 40M 4k"',
  )
  const worst = Math.max(...medians)
  const flat = medians[medians.length - 1] / Math.max(medians[0], 1)
  record({
    row: 'time to first host read after a restore starts',
    clonectl: ours.join('; '),
    peer: `QEMU overlay + copy-on-read + block-stream: ${haveQsd ? theirs.join('; ') : 'not measured (install qemu-system-common for qemu-storage-daemon)'}; dd (first read = full copy of ${sizes[0] / GiB} GiB) ${fmt(dd)}`,
    ratio: worst,
    ratioText: `${worst.toFixed(0)} ms (worst median), ${flat.toFixed(2)}× from ${sizes[0] / GiB} to ${sizes[sizes.length - 1] / GiB} GiB (qemu-io process start included)`,
    mark: '≤ 100 ms; flat: ≤ 2× from the small to the large size',
    pass: worst <= 100 && flat <= 2,
  })
}

/** fio's averaged IOPS log (--write_iops_log with --log_avg_msec): read + write per interval. */
function readIopsLog(logBase: string): Array<{t: number; v: number}> {
  const file = ['_iops.1.log', '_iops.log'].map((x) => `${logBase}${x}`).find((f) => existsSync(f))
  if (!file) return []
  const sum = new Map<number, number>()
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    const [ms, v] = line.split(',').map((x) => Number(x.trim()))
    if (Number.isFinite(ms) && Number.isFinite(v)) sum.set(ms, (sum.get(ms) ?? 0) + v)
  }
  return [...sum].sort((x, y) => x[0] - y[0]).map(([ms, v]) => ({t: ms / 1000, v}))
}

/** Mean IOPS of the log's intervals that end within [from, to] seconds. */
function meanIops(log: Array<{t: number; v: number}>, from: number, to: number): number {
  const inside = log.filter((p) => p.t > from && p.t <= to)
  return inside.length ? inside.reduce((x, p) => x + p.v, 0) / inside.length : Number.NaN
}

async function fioRows(): Promise<void> {
  if (!have('fio')) return skip('fio rows', 'install fio')
  const dir = freshDir(base, 'fio')
  const state = join(dir, 'state')
  const control = join(state, 'groups', 'g', 'control.sock')
  const size = quick ? 256 * MiB : GiB
  makeRandom(join(dir, 'src.img'), size)
  clonectl(state, `group create g --source ${dir}/src.img`)
  const job = {size: `${size / MiB}M`, runtime: FIO_SECONDS}
  type Who = 'clonectl' | 'qemu-nbd' | 'nbdkit'
  const run = async (what: Who, rw: string, bs: string, iodepth: number, extra?: string): Promise<FioResult> => {
    if (what === 'clonectl') {
      const {proc, uri} = await serveGroup(state, 'g')
      try {
        return await fioAsync(uri, {...job, rw, bs, iodepth, extra})
      } finally {
        await stop(proc)
      }
    }
    const sock = join(dir, `${what}.sock`)
    rmSync(sock, {force: true})
    const cmd = what === 'qemu-nbd' ? `qemu-nbd -f raw -t -k ${sock} ${dir}/src.img` : `nbdkit -f -U ${sock} file file=${dir}/src.img`
    const proc = await background(cmd, sock)
    try {
      return await fioAsync(`nbd+unix:///?socket=${sock}`, {...job, rw, bs, iodepth, extra})
    } finally {
      await stop(proc)
    }
  }
  const peers: Who[] = []
  if (have('qemu-nbd')) peers.push('qemu-nbd')
  if (have('nbdkit')) peers.push('nbdkit')
  const each = <T>(who: Who[], f: (w: Who) => Promise<T>): Record<string, () => Promise<T>> => Object.fromEntries(who.map((w) => [w, () => f(w)]))

  const rand = await compareAsync(RUNS, each(['clonectl', ...peers], async (w) => {
    const r = await run(w, 'randrw', '4k', 16)
    return r.readIops + r.writeIops
  }))
  show(`clonectl serve g; qemu-nbd -f raw -t -k SOCK src.img; nbdkit -f -U SOCK file file=src.img`, `fio --ioengine=nbd --uri=... --rw=randrw --bs=4k --iodepth=16 --size=${job.size} --time_based --runtime=${FIO_SECONDS}`)
  const c = stats(rand.clonectl)
  const q = rand['qemu-nbd'] ? stats(rand['qemu-nbd']) : undefined
  const k = rand.nbdkit ? stats(rand.nbdkit) : undefined
  const rq = q ? c.median / q.median : Number.NaN
  record({row: '4K randrw QD16 IOPS', clonectl: fmt(c, 'IOPS', 0), peer: `qemu-nbd ${q ? fmt(q, 'IOPS', 0) : '-'}; nbdkit ${k ? fmt(k, 'IOPS', 0) : '-'}`, ratio: rq, ratioText: `${rq.toFixed(2)} of qemu-nbd, ${k ? (c.median / k.median).toFixed(2) : '-'} of nbdkit`, mark: '≥ 0.8 of qemu-nbd', pass: q ? rq >= 0.8 : undefined})

  // RUNS times each, in random order, medians (one sample each swung by ±30% on this VM).
  for (const rw of ['read', 'write'] as const) {
    const mbps = (r: FioResult): number => (rw === 'read' ? r.readMBps : r.writeMBps)
    // nbdkit beside qemu-nbd, as in the randrw row: qemu-nbd 7.2 on one connection has been
    // seen far below nbdkit for 1M requests under fio, and a ratio against it alone flatters.
    const r = await compareAsync(RUNS, each(['clonectl', ...peers], async (w) => mbps(await run(w, rw, '1M', 8))))
    const ma = stats(r.clonectl).median
    const mb = r['qemu-nbd'] ? stats(r['qemu-nbd']).median : Number.NaN
    const mk = r.nbdkit ? stats(r.nbdkit).median : Number.NaN
    record({
      row: `1M sequential ${rw} MB/s`,
      clonectl: fmt(stats(r.clonectl), 'MB/s', 0),
      peer: `qemu-nbd ${r['qemu-nbd'] ? fmt(stats(r['qemu-nbd']), 'MB/s', 0) : '-'}; nbdkit ${r.nbdkit ? fmt(stats(r.nbdkit), 'MB/s', 0) : '-'}`,
      ratio: ma / mb,
      ratioText: `${(ma / mb).toFixed(2)} of qemu-nbd, ${r.nbdkit ? (ma / mk).toFixed(2) : '-'} of nbdkit`,
      mark: '≥ 0.9 of qemu-nbd',
      pass: r['qemu-nbd'] ? ma / mb >= 0.9 : undefined,
    })
  }

  // A fractured clone: every first write to an extent pays one map commit. RUNS times each,
  // in random order: no clone, and one fractured clone.
  let hasClone = false
  const cloneFractured = (want: boolean): void => {
    if (want && !hasClone) {
      clonectl(state, `clone add g c --path ${dir}/c.img --create`)
      clonectl(state, 'clone fracture g c')
    } else if (!want && hasClone) {
      clonectl(state, 'clone remove g c --yes')
      rmSync(join(dir, 'c.img'), {force: true})
    } else if (want) {
      clonectl(state, 'clone sync g c')
      clonectl(state, 'clone fracture g c')
    }
    hasClone = want
  }
  const fw = await compareAsync(RUNS, {
    none: async () => {
      cloneFractured(false)
      return (await run('clonectl', 'randwrite', '4k', 16)).writeIops
    },
    one: async () => {
      cloneFractured(true)
      return (await run('clonectl', 'randwrite', '4k', 16)).writeIops
    },
  })
  const rf = stats(fw.one).median / stats(fw.none).median
  record({row: '4K randwrite with one fractured clone', clonectl: fmt(stats(fw.one), 'IOPS', 0), peer: `no clone ${fmt(stats(fw.none), 'IOPS', 0)}`, ratio: rf, ratioText: rf.toFixed(2), mark: '≥ 0.5', pass: rf >= 0.5})

  // During a protected restore, against idle, RUNS times each in random order. The restore
  // is rate-limited so that it spans most of the fio run, and host IOPS are taken only over
  // the restore's own window (cut from fio's IOPS log by the restore's progress); the idle run
  // is cut to the same window. The restore starts before fio connects: restore refuses to
  // switch the source under a connected host.
  const dirtyBytes = Math.floor(size * 0.5)
  const rate = Math.max(1, Math.floor(dirtyBytes / MiB / (FIO_SECONDS * 0.9)))
  const logged = '--percentile_list=99 --log_avg_msec=250 --write_iops_log='
  const windows: number[] = []
  const idleI: number[] = []
  const duringI: number[] = []
  const p99: number[] = []
  let timeline: {idle?: Array<{t: number; v: number}>; during?: Array<{t: number; v: number}>; progress?: Array<{t: number; done: number}>; window?: number} = {}
  const order = [] as Array<'idle' | 'during'>
  for (let i = 0; i < RUNS; i++) order.push(...shuffled(['idle', 'during'] as const))
  const idleLogs: Array<Array<{t: number; v: number}>> = []
  for (const w of order) {
    cloneFractured(true)
    const logBase = join(dir, `fiolog-${w}`)
    rmSync(`${logBase}_iops.1.log`, {force: true})
    if (w === 'idle') {
      await run('clonectl', 'randrw', '4k', 16, `${logged}${logBase}`)
      const log = readIopsLog(logBase)
      idleLogs.push(log)
      timeline.idle ??= log
      continue
    }
    await dirtyExtents(state, 'g', 0.5, 5 + duringI.length)
    const {proc, uri} = await serveGroup(state, 'g')
    let restore: Awaited<ReturnType<typeof background>> | undefined
    try {
      restore = await background(`node ${bin} restore g c --yes --rate ${rate}M --state-dir=${state}`, '/dev/null')
      await waitForOperation(control)
      const progress: Array<{t: number; done: number}> = []
      const t0 = Date.now()
      let end = Number.POSITIVE_INFINITY
      const sampler = setInterval(() => {
        controlRequest(control, {op: 'status'})
          .then((st) => {
            const t = (Date.now() - t0) / 1000
            const op = (st as {server?: {operation?: {doneBytes: number; totalBytes: number}}}).server?.operation
            if (op) progress.push({t, done: op.totalBytes ? (100 * op.doneBytes) / op.totalBytes : 100})
            if ((!op || op.doneBytes >= op.totalBytes) && end === Number.POSITIVE_INFINITY) end = t
          })
          .catch(() => undefined)
      }, 250)
      // Asynchronous, so the progress sampler runs while fio does.
      const during = await fioAsync(uri, {...job, rw: 'randrw', bs: '4k', iodepth: 16, extra: `${logged}${logBase}`})
      clearInterval(sampler)
      const window = Math.min(end, FIO_SECONDS)
      const log = readIopsLog(logBase)
      windows.push(window)
      duringI.push(meanIops(log, 0, window))
      if (during.readP99us !== undefined) p99.push(during.readP99us)
      if (!timeline.during) timeline = {...timeline, during: log, progress, window}
      await finishRestore(control, restore)
    } finally {
      if (restore) await stop(restore)
      await stop(proc)
    }
  }
  // Each idle run over the median restore window, so both sides cover the same span.
  const window = stats(windows).median
  for (const log of idleLogs) idleI.push(meanIops(log, 0, window))
  if (!quick && !only) writeTimeline(timeline)
  show(`clonectl restore g c --yes --rate ${rate}M; then fio as above with --write_iops_log --log_avg_msec=250   # IOPS over the restore's window only`)
  const rd = stats(duringI).median / stats(idleI).median
  record({
    row: `4K randrw during a protected restore (restore rate-limited to ${rate} MiB/s; IOPS over the restore's window)`,
    clonectl: `${fmt(stats(duringI), 'IOPS', 0)} over ${fmt(stats(windows), 's', 1)} of restore; read p99 (whole run) ${p99.length ? stats(p99).median.toFixed(0) : '?'} µs`,
    peer: `idle, same window ${fmt(stats(idleI), 'IOPS', 0)}`,
    ratio: rd,
    ratioText: rd.toFixed(2),
    mark: '≥ 0.5',
    pass: rd >= 0.5,
  })
  rmSync(dir, {recursive: true, force: true})
}

function writeTimeline(tl: {idle?: Array<{t: number; v: number}>; during?: Array<{t: number; v: number}>; progress?: Array<{t: number; done: number}>; window?: number}): void {
  const idle = tl.idle ?? []
  const during = tl.during ?? []
  const progress = tl.progress ?? []
  const W = 720
  const H = 300
  const maxT = Math.max(1, ...during.map((p) => p.t), ...idle.map((p) => p.t), ...progress.map((p) => p.t))
  const maxV = Math.max(1, ...during.map((p) => p.v), ...idle.map((p) => p.v))
  const x = (t: number): number => 50 + (t / maxT) * (W - 100)
  const y = (f: number): number => H - 40 - f * (H - 80)
  const line = (pts: Array<[number, number]>): string => pts.map(([a, b]) => `${a.toFixed(1)},${b.toFixed(1)}`).join(' ')
  const win = tl.window ?? 0
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="${W / 2}" y="20" text-anchor="middle">Host I/O during a protected restore and idle (fio 4K randrw QD16 over clonectl serve)</text>
<rect x="${x(0)}" y="40" width="${(x(win) - x(0)).toFixed(1)}" height="${H - 80}" fill="#f3f3f3"/>
<line x1="50" y1="${H - 40}" x2="${W - 50}" y2="${H - 40}" stroke="black"/><line x1="50" y1="40" x2="50" y2="${H - 40}" stroke="black"/>
<text x="${W / 2}" y="${H - 10}" text-anchor="middle">seconds since fio started (shaded: the restore's window, ${win.toFixed(1)} s)</text>
<text x="10" y="35" fill="steelblue">IOPS during the restore (max ${maxV.toFixed(0)})</text>
<text x="${W / 2}" y="35" fill="gray" text-anchor="middle">IOPS idle</text>
<text x="${W - 10}" y="35" fill="darkorange" text-anchor="end">restore progress %</text>
<polyline fill="none" stroke="gray" stroke-width="1" points="${line(idle.map((p) => [x(p.t), y(p.v / maxV)]))}"/>
<polyline fill="none" stroke="steelblue" stroke-width="1.5" points="${line(during.map((p) => [x(p.t), y(p.v / maxV)]))}"/>
<polyline fill="none" stroke="darkorange" stroke-width="2" points="${line(progress.map((p) => [x(p.t), y(p.done / 100)]))}"/>
</svg>
`
  writeFileSync(join(repo, 'bench', 'restore-timeline.svg'), svg)
}

/** Peak RSS of a sync and of a restore of a large sparse source, RUNS times each; the mark holds for the worst run. */
function memory(): void {
  const size = quick ? GiB : 16 * GiB
  const dir = freshDir(base, 'mem')
  const state = join(dir, 'state')
  makeSparse(join(dir, 'src.img'), size, 0.0005)
  const rss = (cmd: string): number => Number(sh(`/usr/bin/time -f '%M' ${cmd} --state-dir=${state} 2>&1 >/dev/null | tail -1`).trim()) / 1024
  const sync: number[] = []
  const restore: number[] = []
  for (let i = 0; i < RUNS; i++) {
    rmSync(state, {recursive: true, force: true})
    rmSync(join(dir, 'c.img'), {force: true})
    clonectl(state, `group create g --source ${dir}/src.img`)
    sync.push(rss(`node ${bin} clone add g c --path ${dir}/c.img --create`))
    clonectl(state, 'clone fracture g c')
    sh(`dd if=/dev/urandom of=${dir}/src.img bs=1M count=8 seek=${100 + i * 8} conv=notrunc status=none`)
    restore.push(rss(`node ${bin} restore g c --yes`))
  }
  show(`/usr/bin/time -f %M clonectl clone add g c --path c.img --create   # ${size / GiB} GiB, 0.05% data`, '/usr/bin/time -f %M clonectl restore g c --yes')
  const worst = Math.max(...sync, ...restore)
  record({row: `memory: peak RSS, sync and restore of a ${size / GiB} GiB sparse source (worst of ${RUNS})`, clonectl: `sync ${fmt(stats(sync), 'MiB', 0)}; restore ${fmt(stats(restore), 'MiB', 0)}`, peer: '-', ratio: worst, ratioText: `${worst.toFixed(0)} MiB`, mark: '≤ 150 MiB', pass: worst <= 150})
  rmSync(dir, {recursive: true, force: true})
}

/**
 * Start-up, as every cron step and every `status` pays it: whole processes, warm (no cache
 * drop), side by side in random order: `node -e 0` (the floor), `qemu-img --version` (a C
 * tool), `clonectl --version`, `clonectl status` with 5 groups, and a no-op `clone sync` (a
 * synchronized clone). Mark: status within 2x `node -e 0`.
 */
function startup(): void {
  const dir = freshDir(base, 'startup')
  const state = join(dir, 'state')
  for (let i = 1; i <= 5; i++) {
    sh(`truncate -s 64M ${dir}/s${i}.img`)
    clonectl(state, `group create g${i} --source ${dir}/s${i}.img`)
    clonectl(state, `clone add g${i} c --path ${dir}/c${i}.img --create`)
  }
  const n = quick ? 5 : 20
  const contenders: Record<string, () => number> = {
    'node -e 0': () => timed('node -e 0'),
    'clonectl --version': () => timed(`node ${bin} --version`),
    'clonectl status': () => timed(`node ${bin} status --state-dir=${state}`),
    'clonectl clone sync (no-op)': () => timed(`node ${bin} clone sync g1 c --state-dir=${state}`),
  }
  if (have('qemu-img')) contenders['qemu-img --version'] = () => timed('qemu-img --version')
  const r = compare(n, contenders, undefined, {cold: false})
  show(`node -e 0; qemu-img --version; node ${bin} --version; node ${bin} status   # 5 groups; node ${bin} clone sync g1 c   # already synchronized`)
  const ms = (k: string): string => `${(r[k].median * 1000).toFixed(0)} ms`
  const ratio = r['clonectl status'].median / r['node -e 0'].median
  record({
    row: `start-up: whole processes, warm, ${n} runs each in random order`,
    clonectl: `--version ${ms('clonectl --version')}; status (5 groups) ${ms('clonectl status')}; no-op clone sync ${ms('clonectl clone sync (no-op)')}`,
    peer: `node -e 0 ${ms('node -e 0')}${r['qemu-img --version'] ? `; qemu-img --version ${ms('qemu-img --version')}` : ''}`,
    ratio,
    ratioText: `status ${ratio.toFixed(2)}× node -e 0 (--version ${(r['clonectl --version'].median / r['node -e 0'].median).toFixed(2)}×, no-op sync ${(r['clonectl clone sync (no-op)'].median / r['node -e 0'].median).toFixed(2)}×)`,
    mark: 'status ≤ 2× node -e 0',
    pass: ratio <= 2,
  })
  rmSync(dir, {recursive: true, force: true})
}

async function main(): Promise<void> {
  const missing = ['nbdcopy', 'qemu-io', 'qemu-nbd', 'nbdkit', 'fio'].filter((c) => !have(c))
  if (missing.length) process.stdout.write(`missing tools: ${missing.join(', ')} (apt-get install libnbd-bin qemu-utils nbdkit fio); their rows are skipped\n`)
  process.stdout.write(`clonectl bench${quick ? ' --quick' : ''}: ${SIZE / MiB} MiB, ${RUNS} run(s) per pair in random order (--seed ${SEED}), in ${base}\n`)
  if (strippedEnv.length) process.stdout.write(`bench: running every process without ${strippedEnv.join(' and ')}\n`)
  if (want('startup')) startup()
  const canCopy = have('nbdcopy')
  if (!canCopy) skip('copy rows', 'install libnbd-bin (nbdcopy)')
  else {
    if (want('full') || want('incremental') || want('restore')) {
      const full = want('full') ? fullAndIncremental() : untimedFull()
      if (want('incremental')) await incremental(full.state, full, SIZE)
      if (want('restore')) await protectedRestore(full.state, full.dir)
      rmSync(full.dir, {recursive: true, force: true})
    }
    if (want('full-warm')) fullWarm()
    if (want('incremental-16g')) await incrementalLarge()
    if (want('sparse')) sparse()
    if (want('sparse-tib')) sparseTib()
    if (want('remote')) await remoteRows()
  }
  if (want('first-read')) {
    if (have('qemu-io')) await firstRead()
    else skip('time to first host read', 'install qemu-utils')
  }
  if (want('fio')) await fioRows()
  if (want('memory')) memory()
  if (want('mirror')) await mirrorRows({base, quick, runs: RUNS, fioSeconds: FIO_SECONDS, record, skip, fmt, commands})
  if (!quick && !arg('size') && !arg('runs')) {
    if (!only) writeReport()
    else if (process.argv.includes('--update')) updateReport(only)
  }
  rmSync(base, {recursive: true, force: true})
  const missed = rows.filter((r) => r.pass === false).length
  process.stdout.write(`bench done: marks met by ${rows.filter((r) => r.pass).length} of ${rows.length} rows (${missed} missed)${quick ? '; --quick: marks are not enforced' : ''}\n`)
}

function rowLine(r: Row, remark = ''): string {
  return `| ${r.row} | ${r.clonectl} | ${r.peer} | ${r.ratioText} | ${r.mark} | ${r.pass === undefined ? `n/a${r.note ? ` (${r.note})` : ''}` : r.pass ? 'pass' : '**miss**'}${remark} |`
}

/**
 * `--only ROWS --update` at full size: those rows of BENCHMARKS.md are replaced by this run's
 * (marked with the date and the commit), the others stay as the last full run measured them.
 * A row this run does not find in the table is added at its end.
 */
function updateReport(only: string[]): void {
  const path = join(repo, 'BENCHMARKS.md')
  let md = readFileSync(path, 'utf8')
  const commit = sh('git describe --always --dirty').trim()
  const remark = ` (re-measured ${new Date().toISOString().slice(0, 10)} at ${commit}, \`--only ${only.join(',')}\`, without NODE_EXTRA_CA_CERTS)`
  const lines = md.split('\n')
  for (const r of rows) {
    const i = lines.findIndex((l) => l.startsWith(`| ${r.row} |`))
    if (i >= 0) lines[i] = rowLine(r, remark)
    else {
      let last = lines.findIndex((l) => l.startsWith('|---'))
      while (lines[last + 1]?.startsWith('| ')) last++
      lines.splice(last + 1, 0, rowLine(r, remark))
    }
  }
  md = lines.join('\n')
  const note = 'Rows marked "re-measured" were run again later on a machine of the same kind with `npm run bench -- --only ROWS --update`; the others are from the full run.'
  if (!md.includes(note)) md = md.replace('\n\n| row |', `\n${note}\n\n| row |`)
  if (!md.includes(ENV_NOTE)) md = md.replace('rows that miss their mark say so.', `rows that miss their mark say so. ${ENV_NOTE} Rows whose result does not say "without NODE_EXTRA_CA_CERTS" were measured before this was so, with it set: each clonectl process in them paid 44 ms more.`)
  writeFileSync(path, md)
}

/**
 * Said in the report: processes ran without NODE_EXTRA_CA_CERTS and NODE_OPTIONS (see
 * strippedEnv), whether or not the machine running it had them set.
 */
const ENV_NOTE = 'Every process ran without NODE_EXTRA_CA_CERTS and NODE_OPTIONS: with a CA bundle named there, Node parses it before any script runs (44 ms on this VM), which clonectl and `node -e 0` would pay and the C peers would not.'

function writeReport(): void {
  const machine = `${cpus().length} cores (${cpus()[0]?.model ?? '?'}), ${(totalmem() / GiB).toFixed(0)} GiB of memory, Linux ${release()}, Node ${process.version}`
  const table = rows.map((r) => rowLine(r)).join('\n')
  const md = `# clonectl benchmarks

Measured by \`npm run bench\` on ${new Date().toISOString().slice(0, 10)}, on the project's benchmark machine: ${machine}.
Within each row the contenders ran ${RUNS} times each, in a new random order every round
(\`npm run bench -- --seed ${SEED}\` replays the order), on the same files, with the page cache
dropped before each copy; medians (min, max) and the ratio of medians are shown. Numbers are
as measured; rows that miss their mark say so. ${ENV_NOTE}

| row | clonectl | peer | ratio | mark | result |
|---|---|---|---|---|---|
${table}

![host IOPS idle and during a protected restore, with the restore's progress](bench/restore-timeline.svg)

Commands (\`clonectl\` is \`node bin/run.js\`; files are in a scratch directory):

\`\`\`
${commands.map(shown).join('\n')}
\`\`\`
`
  writeFileSync(join(repo, 'BENCHMARKS.md'), md)
}

await main()
