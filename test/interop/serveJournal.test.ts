/**
 * What serve tells the journal (issue 18 items 3 and 4), read from its stderr.
 *
 * Given `clonectl serve j --listen 127.0.0.1:0` without --socket, then the unix socket is
 * still served (the help says "also") and the start line names both:
 * "serving group j on nbd+unix:///?socket=… and nbd://127.0.0.1:PORT/"; with --tcp-only
 * there is no unix socket and the line reads "serving group j on nbd://127.0.0.1:PORT/".
 *
 * Given clone c1 fractured and 16 MiB written by a host since, when `clonectl restore j c1
 * --rate 2M` runs under serve, then serve logs that it started and its progress; when serve
 * is SIGKILLed mid-restore and started again, then it logs that it took over the stale lock
 * (group named), that it resumes the restore from c1 with what is left, progress by 10 %
 * steps, and that it finished. Every line names the group and the clone.
 *
 * Given group f with clone r synchronized on an nbdkit export whose writes fail (EIO) once a
 * trigger file exists (nbdkit's error filter), when a host writes through serve, then serve
 * logs that it fractured clone r of group f after the failed mirrored write.
 */
import assert from 'node:assert/strict'
import {randomBytes} from 'node:crypto'
import * as fsp from 'node:fs/promises'
import {connect} from 'node:net'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {waitFor} from '../helpers/waitFor.js'
import {spawn} from 'node:child_process'
import {MiB, NbdTestClient, type Served, clonectl, clonectlOk, has, needTool, socketLive, startServe, tempDir} from '../helpers/serve.js'

let dir: string
let state: string
const serving: Served[] = []

before(async () => {
  dir = await tempDir('journal')
  state = join(dir, 'state')
  const src = join(dir, 'src.img')
  await fsp.writeFile(src, randomBytes(16 * MiB))
  await clonectlOk(state, ['group', 'create', 'j', '--source', src])
  await clonectlOk(state, ['clone', 'add', 'j', 'c1', '--path', join(dir, 'c1.img'), '--create'])
  await clonectlOk(state, ['clone', 'sync', 'j', 'c1'])
})

const children: Array<ReturnType<typeof spawn>> = []

after(async () => {
  for (const c of children) c.kill('SIGKILL')
  for (const s of serving) await s.stop('SIGKILL')
  await fsp.rm(dir, {recursive: true, force: true})
})

async function serve(extra: string[], group = 'j'): Promise<Served> {
  const s = await startServe(state, group, extra)
  serving.push(s)
  return s
}

/** Wait until serve's stderr has a line matching `re` (state: its output, never a delay). */
async function line(s: Served, re: RegExp, what: string, timeoutMs = 60_000): Promise<RegExpExecArray> {
  try {
    return await waitFor(() => re.exec(s.stderr()) ?? undefined, what, timeoutMs, 50)
  } catch (error) {
    throw new Error(`${(error as Error).message}; serve stderr:\n${s.stderr()}`, {cause: error})
  }
}

/** True when a TCP listener accepts on 127.0.0.1:port. */
function tcpAccepts(port: number): Promise<boolean> {
  return new Promise((r) => {
    const c = connect(port, '127.0.0.1')
    c.once('connect', () => {
      c.destroy()
      r(true)
    })
    c.once('error', () => r(false))
  })
}

describe('serve --listen keeps the unix socket, and says where it serves', () => {
  test('given --listen without --socket, then both the unix socket and TCP serve, and the start line names both', async () => {
    const s = await serve(['--listen', '127.0.0.1:0'])
    // startServe returned once the start line was out.
    const m = /^serving group j on nbd\+unix:\/\/\/\?socket=(\S+) and nbd:\/\/127\.0\.0\.1:(\d+)\/$/m.exec(s.stderr())
    assert.ok(m, `the start line names the unix socket and TCP: ${s.stderr()}`)
    assert.equal(m[1], s.socket)
    const c = await NbdTestClient.connect(s.socket)
    assert.equal(c.size, 16 * MiB)
    await c.disconnect()
    assert.ok(await tcpAccepts(Number(m[2])), 'TCP accepts too')
    assert.equal((await s.stop()).code, 0)
  })

  test('given --listen --tcp-only, then no unix socket and the line names TCP only; --tcp-only without --listen is a usage error', async () => {
    const s = await serve(['--listen', '127.0.0.1:0', '--tcp-only'])
    const m = /^serving group j on nbd:\/\/127\.0\.0\.1:(\d+)\/$/m.exec(s.stderr())
    assert.ok(m, `the start line names TCP only: ${s.stderr()}`)
    await assert.rejects(fsp.lstat(s.socket), {code: 'ENOENT'})
    assert.ok(await tcpAccepts(Number(m[1])))
    const st = await clonectlOk(state, ['status', 'j'])
    assert.match(st.stdout, new RegExp(`served by pid ${s.proc.pid} on TCP port ${m[1]}, `), 'status says where, without "and" before nothing')
    assert.equal((await s.stop()).code, 0)
    const bad = await clonectl(state, ['serve', 'j', '--tcp-only'])
    assert.equal(bad.code, 2, bad.stderr)
    assert.match(bad.stderr, /--listen/)
  })
})

describe('serve tells the journal about its jobs', () => {
  test('given a restore under serve killed with SIGKILL, then the next serve logs the lock takeover, the resume, progress and the finish, naming group and clone', {timeout: 180_000}, async () => {
    let s = await serve([])
    await clonectlOk(state, ['clone', 'fracture', 'j', 'c1'])
    const host = await NbdTestClient.connect(s.socket)
    for (let off = 0; off < 16 * MiB; off += MiB) await host.write(off, randomBytes(MiB))
    await host.disconnect()
    const restore = clonectl(state, ['restore', 'j', 'c1', '--yes', '--rate', '2M'])
    await line(s, /^group j: restore from clone c1 started$/m, 'the restore to start')
    await line(s, /^group j: restore from clone c1: \d+ % \(\S+ \S+ of 16\.0 MiB\), \S+ \S+\/s$/m, 'a progress line')
    const first = s
    await first.stop('SIGKILL')
    await restore

    s = await serve(['--rate', '4M'])
    assert.match(s.stderr(), new RegExp(`took over the lock of group j left by pid ${first.proc.pid} \\(.*serve j.*\\), which is no longer running`))
    await line(s, /^group j: resuming the interrupted restore from clone c1: \S+ \S+ left to copy \(hosts are served meanwhile\)$/m, 'the resume line')
    await line(s, /^group j: restore from clone c1 finished: the source now holds the clone's data \(\S+ \S+ copied in .+\)$/m, 'the finish line')
    const steps = [...s.stderr().matchAll(/^group j: restore from clone c1: (\d+) %/gm)].map((x) => Number(x[1]))
    assert.ok(steps.length >= 1, 'at least one progress line while the resumed restore ran')
    // A line at each 10 % step passed: each in a later step than the one before.
    const deciles = steps.map((p) => Math.floor(p / 10))
    assert.ok(deciles.every((d, i) => d > 0 && d < 10 && (i === 0 || d > deciles[i - 1])), `one line per 10 % step, going up: ${steps.join(', ')} %`)
    assert.equal((await s.stop()).code, 0)
    assert.ok(await clonectlOk(state, ['status', 'j']))
  })
})

describe('serve tells the journal when it fractures a clone', () => {
  test('given clone r synchronized on an export whose writes start failing, when a host writes, then serve logs that it fractured r of group f', async () => {
    needTool(!has('nbdkit', '--version') && 'nbdkit')
    const src = join(dir, 'f-src.img')
    const remote = join(dir, 'f-remote.img')
    const sock = join(dir, 'f-nbdkit.sock')
    const trigger = join(dir, 'f-fail-writes')
    await fsp.writeFile(src, randomBytes(4 * MiB))
    await fsp.writeFile(remote, Buffer.alloc(4 * MiB))
    const kit = spawn('nbdkit', ['-f', '--exit-with-parent', '-U', sock, '-e', 'c', '--filter=error', 'file', remote, 'error-pwrite=EIO', 'error-pwrite-rate=100%', `error-pwrite-file=${trigger}`], {stdio: 'ignore'})
    children.push(kit)
    await waitFor(async () => (await socketLive(sock)) || undefined, 'nbdkit to listen')
    await clonectlOk(state, ['group', 'create', 'f', '--source', src])
    await clonectlOk(state, ['clone', 'add', 'f', 'r', '--path', `nbd+unix:///c?socket=${sock}`])
    const s = await serve([], 'f')
    await fsp.writeFile(trigger, '')
    const host = await NbdTestClient.connect(s.socket)
    await host.write(0, randomBytes(64 * 1024))
    await line(s, /^group f: clone r fractured: a mirrored write failed: .+ \(host writes go on; `clonectl clone sync f r` brings it back\)$/m, 'the fracture line')
    await host.disconnect()
    assert.equal((await s.stop()).code, 0)
  })
})
