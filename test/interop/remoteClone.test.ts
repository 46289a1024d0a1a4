/**
 * Remote clones with real NBD servers nobody here wrote (qemu-nbd, nbdkit), through the CLI:
 * add, sync, fracture, verify, protected restore, compared with `cmp` against the file the
 * server exports; the server killed mid-sync and mid-restore, then restarted: the operation
 * resumes and the result is identical, and the CLI never hangs. Under `serve`, a mirrored
 * write to a remote that vanished fractures that clone and the host's write succeeds.
 */
import assert from 'node:assert/strict'
import {type ChildProcess, spawn} from 'node:child_process'
import * as fsp from 'node:fs/promises'
import {createServer} from 'node:net'
import {join} from 'node:path'
import {after, before, describe, test} from 'node:test'
import {Cli, MiB, cmp, has, pwrite, randomImage, sha256, tempDir} from '../helpers/cli.js'
import {controlRequest} from '../../src/control/ControlClient.js'
import {NbdVolume} from '../../src/volume/NbdVolume.js'
import {makeTlsCreds} from '../helpers/tlsCerts.js'
import {NbdTestClient, sleep, startServe, needTool} from '../helpers/serve.js'
import {waitFor} from '../helpers/waitFor.js'

let dir: string
let cli: Cli
const children = new Set<ChildProcess>()

before(async () => {
  dir = await tempDir('remote')
  cli = new Cli(join(dir, 'state'))
})

after(async () => {
  for (const c of children) c.kill('SIGKILL')
  await fsp.rm(dir, {recursive: true, force: true})
})

/** A free TCP port on loopback. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.listen(0, '127.0.0.1', () => {
      const a = s.address()
      s.close(() => (a && typeof a === 'object' ? resolve(a.port) : reject(new Error('no port'))))
    })
  })
}

interface Peer {
  uri: string
  kill: () => Promise<void>
}

/** Start an NBD server exporting `file`: qemu-nbd or nbdkit, on a unix socket or TCP loopback. */
async function startPeer(kind: 'qemu-nbd' | 'nbdkit', file: string, transport: {unix: string} | {port: number}): Promise<Peer> {
  const args =
    kind === 'qemu-nbd'
      ? ['-f', 'raw', '-t', '-x', 'c', ...('unix' in transport ? ['-k', transport.unix] : ['-b', '127.0.0.1', '-p', String(transport.port)]), file]
      : ['-f', '--exit-with-parent', ...('unix' in transport ? ['-U', transport.unix] : ['-i', '127.0.0.1', '-p', String(transport.port)]), '-e', 'c', 'file', file]
  const p = spawn(kind, args, {stdio: ['ignore', 'ignore', 'pipe']})
  children.add(p)
  let err = ''
  p.stderr?.on('data', (b: Buffer) => (err += b.toString()))
  const exited = new Promise<void>((r) => p.on('exit', () => r()))
  const uri = 'unix' in transport ? `nbd+unix:///c?socket=${transport.unix}` : `nbd://127.0.0.1:${transport.port}/c`
  // Ready when a client completes a handshake.
  for (let i = 0; ; i++) {
    try {
      const v = await NbdVolume.open(uri, {write: false, timeouts: {connectMs: 2000}})
      await v.close()
      break
    } catch {
      if (i > 200) throw new Error(`${kind} did not start: ${err}`)
      await sleep(25)
    }
  }
  return {
    uri,
    kill: async () => {
      p.kill('SIGKILL')
      await exited
      children.delete(p)
      if ('unix' in transport) await fsp.rm(transport.unix, {force: true})
    },
  }
}

/**
 * Group `g`: a random source of `size` bytes (seed), and clone r on an empty export of the
 * same size served by `kind`; the first sync done, the clone fractured when asked.
 */
async function groupWithRemote(g: string, o: {size: number; seed: number; kind?: 'qemu-nbd' | 'nbdkit'; transport?: {unix: string} | {port: number}; fracture?: boolean; sync?: boolean}): Promise<{src: string; remote: string; transport: {unix: string} | {port: number}; peer: Peer}> {
  const src = join(dir, `${g}-src.img`)
  const remote = join(dir, `${g}-remote.img`)
  await randomImage(src, o.size, o.seed)
  await fsp.writeFile(remote, '')
  await fsp.truncate(remote, o.size)
  const transport = o.transport ?? {unix: join(dir, `${g}.sock`)}
  const peer = await startPeer(o.kind ?? 'qemu-nbd', remote, transport)
  await cli.ok(['group', 'create', g, '--source', src])
  await cli.ok(['clone', 'add', g, 'r', '--path', peer.uri, ...(o.sync === false ? ['--no-sync'] : [])])
  if (o.fracture) await cli.ok(['clone', 'fracture', g, 'r'])
  return {src, remote, transport, peer}
}

const peers: Array<{kind: 'qemu-nbd' | 'nbdkit'; tcp: boolean}> = [
  {kind: 'qemu-nbd', tcp: false},
  {kind: 'qemu-nbd', tcp: true},
  {kind: 'nbdkit', tcp: false},
  {kind: 'nbdkit', tcp: true},
]

for (const {kind, tcp} of peers) {
  describe(`a remote clone on ${kind} over ${tcp ? 'TCP loopback' : 'a unix socket'}`, () => {
    before(() => needTool(has(kind, '--version') ? false : `needs ${kind}`))
    test('add, sync, fracture, verify, protected restore: cmp agrees and the remote is unchanged by the restore', async () => {
      const g = `${kind.replace('-', '')}${tcp ? 't' : 'u'}`
      const src = join(dir, `${g}-src.img`)
      const remote = join(dir, `${g}-remote.img`)
      await randomImage(src, 48 * MiB, 7)
      await fsp.writeFile(remote, '')
      await fsp.truncate(remote, 48 * MiB)
      const peer = await startPeer(kind, remote, tcp ? {port: await freePort()} : {unix: join(dir, `${g}.sock`)})
      await cli.ok(['group', 'create', g, '--source', src])
      const added = await cli.json(['clone', 'add', g, 'r', '--path', peer.uri])
      assert.equal(added.clone.state, 'synchronized')
      assert.ok(cmp(src, remote).same, 'the first sync made the remote equal to the source')
      await cli.ok(['clone', 'fracture', g, 'r'])
      // Change the source behind clonectl's back and through it (a sync of the changes).
      await pwrite(src, 5 * MiB, Buffer.alloc(3 * MiB, 0x5a))
      const v = await cli.run(['verify', g, 'r'])
      assert.equal(v.code, 9, `verify finds the difference: ${v.stderr}`)
      const before = await sha256(remote)
      const r = await cli.json(['restore', g, 'r', '--yes'])
      assert.equal(r.completed, true)
      assert.ok(cmp(src, remote).same, 'the source is the remote clone again')
      assert.equal(await sha256(remote), before, 'the remote clone was never written')
      await cli.ok(['verify', g, 'r'])
      // A drill of the real group: the remote clone restored into a scratch target.
      const target = join(dir, `${g}-target.img`)
      const drill = await cli.json(['drill', g, 'r', '--target', target, '--exec', `cmp {} ${remote}`])
      assert.equal(drill.ok, true, JSON.stringify(drill))
      assert.ok(cmp(target, remote).same, 'the drill target is the remote clone')
      // Unprotected restore (reverse sync): host writes would be mirrored to the remote too.
      await pwrite(src, 9 * MiB, Buffer.alloc(MiB, 0x77))
      const u = await cli.json(['restore', g, 'r', '--unprotected', '--yes', '--force'])
      assert.equal(u.completed, true)
      assert.ok(cmp(src, remote).same)
      assert.equal((await cli.status(g)).clones[0].state, 'synchronized')
      await peer.kill()
    })

    test('the remote killed mid-sync: the sync stops out-of-sync naming the URI, the next sync resumes and the result is identical', async () => {
      const g = `${kind.replace('-', '')}${tcp ? 't' : 'u'}k`
      const src = join(dir, `${g}-src.img`)
      const remote = join(dir, `${g}-remote.img`)
      await randomImage(src, 64 * MiB, 9)
      await fsp.writeFile(remote, '')
      await fsp.truncate(remote, 64 * MiB)
      const transport = tcp ? {port: await freePort()} : {unix: join(dir, `${g}.sock`)}
      let peer = await startPeer(kind, remote, transport)
      await cli.ok(['group', 'create', g, '--source', src])
      await cli.ok(['clone', 'add', g, 'r', '--path', peer.uri, '--no-sync'])
      const bg = cli.spawnBackground(['clone', 'sync', g, 'r', '--rate', '16M'])
      // Past start-up and the first checkpoint (progress is durable once a checkpoint flushed the remote).
      await bg.until(async () => (await cli.status(g)).clones[0].dirtyExtents < 1024, 'the first checkpoint of the sync (fewer than 1024 extents left on disk)')
      await peer.kill()
      const t0 = Date.now()
      const res = await bg.done
      assert.ok(Date.now() - t0 < 30_000, 'the CLI does not hang')
      assert.equal(res.code, 11, `exit status remote (11): ${res.stderr}`)
      assert.ok(res.stderr.includes(peer.uri), `the message names the URI: ${res.stderr}`)
      const s = await cli.status(g)
      assert.equal(s.clones[0].state, 'out-of-sync')
      const left = s.clones[0].dirtyExtents
      assert.ok(left > 0 && left < 1024, `progress kept: ${left} of 1024 extents left`)
      peer = await startPeer(kind, remote, transport)
      const again = await cli.json(['clone', 'sync', g, 'r'])
      assert.equal(again.completed, true)
      assert.ok(again.totalExtents <= left, `copied only what was left (${again.totalExtents} ≤ ${left})`)
      assert.ok(cmp(src, remote).same)
      await peer.kill()
    })
  })
}

describe('a remote clone that vanishes during a restore', () => {
  before(() => needTool(has('qemu-nbd', '--version') ? false : 'needs qemu-nbd'))
  test('the restore pauses while the remote is away, and `restore G` resumes it to an identical result', async () => {
    const g = 'rr'
    const setup = await groupWithRemote(g, {size: 64 * MiB, seed: 11, fracture: true})
    const {src, remote, transport} = setup
    let {peer} = setup
    const cloneSum = await sha256(remote)
    await fsp.rm(src)
    await randomImage(src, 64 * MiB, 12) // damage everything
    const bg = cli.spawnBackground(['restore', g, 'r', '--yes', '--rate', '16M', '--remote-wait', '2'])
    // The restore is recorded and copying (progress on disk) before the remote goes away.
    await bg.until(async () => {
      const st = await cli.status(g)
      return st.operation?.kind === 'restore' && st.clones[0].dirtyExtents < 1024
    }, 'the restore to record itself and checkpoint some progress')
    await peer.kill()
    const res = await bg.done
    assert.equal(res.code, 11, `exit status remote (11) after waiting 2 s: ${res.stderr}`)
    assert.match(res.stderr, /restore paused/)
    assert.match(res.stderr, /clonectl restore rr/, 'says how to resume')
    const s = await cli.status(g)
    assert.equal(s.operation?.kind, 'restore')
    peer = await startPeer('qemu-nbd', remote, transport)
    const r = await cli.json(['restore', g, '--yes'])
    assert.equal(r.completed, true)
    assert.equal(r.resumed, true)
    assert.ok(cmp(src, remote).same, 'source == remote clone')
    assert.equal(await sha256(remote), cloneSum, 'the remote clone is unchanged')
    await peer.kill()
  })

  test('under serve: a mirrored write to a vanished remote fractures it, the host write succeeds; once it is back a sync through the server brings it up to date', async () => {
    const g = 'rs'
    const setup = await groupWithRemote(g, {size: 32 * MiB, seed: 13})
    const {src, remote, transport} = setup
    let {peer} = setup
    const served = await startServe(cli.stateDir, g)
    try {
      const host = await NbdTestClient.connect(served.socket)
      await host.write(0, Buffer.alloc(MiB, 1))
      await host.flush()
      assert.equal((await fsp.readFile(remote)).subarray(0, MiB).equals(Buffer.alloc(MiB, 1)), true, 'mirrored to the remote')
      await peer.kill()
      await host.write(2 * MiB, Buffer.alloc(MiB, 2))
      await host.flush()
      const s = await cli.status(g)
      assert.equal(s.clones[0].state, 'fractured')
      assert.match(s.clones[0].stateReason ?? '', /failed/)
      assert.ok(s.clones[0].dirtyExtents >= 16, 'the write the remote missed is marked')
      // The remote comes back; a sync through the server brings it up to date.
      peer = await startPeer('qemu-nbd', remote, transport)
      const sync = await cli.json(['clone', 'sync', g, 'r'])
      assert.equal(sync.completed, true)
      await host.disconnect()
    } finally {
      await served.stop('SIGTERM')
    }
    assert.ok(cmp(src, remote).same)
    await peer.kill()
  })
})

describe('under serve, a restore whose remote clone vanishes', () => {
  before(() => needTool(has('qemu-nbd', '--version') ? false : 'needs qemu-nbd'))
  test('host reads of unrestored extents get EIO (never wrong data) while the remote is away; the restore goes on by itself when it is back and completes', async () => {
    const g = 'sv'
    const setup = await groupWithRemote(g, {size: 64 * MiB, seed: 31, fracture: true})
    const {src, remote, transport} = setup
    let {peer} = setup
    const cloneSum = await sha256(remote)
    const cloneData = await fsp.readFile(remote)
    await fsp.rm(src)
    await randomImage(src, 64 * MiB, 32) // damaged everywhere
    const served = await startServe(cli.stateDir, g)
    try {
      const restore = cli.spawnBackground(['restore', g, 'r', '--yes', '--rate', '8M'])
      // The host attaches once the restore has started (a restore refuses while one is attached).
      await waitFor(async () => (await controlRequest<{operation?: unknown}>(join(cli.stateDir, 'groups', g, 'control.sock'), {op: 'status'})).operation, 'the restore to start')
      const host = await NbdTestClient.connect(served.socket)
      // The restore is under way: a read near the end is served by copy on demand.
      await restore.until(async () => (await cli.status(g)).operation?.kind === 'restore', 'the restore to start')
      const early = await host.read(60 * MiB, 64 * 1024)
      assert.ok(early.equals(cloneData.subarray(60 * MiB, 60 * MiB + 64 * 1024)), 'COD from the remote')
      await peer.kill()
      await assert.rejects(host.read(62 * MiB, 64 * 1024), /error 5/, 'EIO while the remote is away')
      // The background copy has met the vanished remote and paused before it comes back.
      await waitFor(() => /restore paused/.test(served.stderr()), 'the server to report the restore paused')
      peer = await startPeer('qemu-nbd', remote, transport)
      const later = await host.read(62 * MiB, 64 * 1024)
      assert.ok(later.equals(cloneData.subarray(62 * MiB, 62 * MiB + 64 * 1024)), 'COD works again once the remote is back')
      await controlRequest(join(cli.stateDir, 'groups', g, 'control.sock'), {op: 'rate', rate: 0})
      const r = await restore.done
      assert.equal(r.code, 0, r.stderr)
      assert.match(served.stderr(), /restore paused/)
      await host.disconnect()
    } finally {
      await served.stop('SIGTERM')
    }
    assert.ok(cmp(src, remote).same, 'source == remote clone')
    assert.equal(await sha256(remote), cloneSum, 'the remote clone is unchanged')
    await peer.kill()
  })
})

describe('a remote clone on another clonectl serve, over TLS', () => {
  test('nbds:// with x509 certificates syncs and restores; plaintext is refused; a URI reaching a group\'s own export is refused as its source', async () => {
    const creds = makeTlsCreds(dir)
    // Group "far" plays the backup system: its source is the remote clone's storage.
    const farSrc = join(dir, 'far-src.img')
    await fsp.writeFile(farSrc, '')
    await fsp.truncate(farSrc, 16 * MiB)
    // Another system: its own state directory.
    const farCli = new Cli(join(dir, 'far-state'))
    await farCli.ok(['group', 'create', 'far', '--source', farSrc])
    const port = await freePort()
    const far = await startServe(farCli.stateDir, 'far', ['--listen', `127.0.0.1:${port}`, '--tls-dir', creds.dir, '--tls-required'])
    try {
      const src = join(dir, 'near-src.img')
      await randomImage(src, 16 * MiB, 21)
      await cli.ok(['group', 'create', 'near', '--source', src])
      const plain = await cli.run(['clone', 'add', 'near', 'r', '--path', `nbd://127.0.0.1:${port}/`])
      assert.equal(plain.code, 11, `plaintext refused by a TLS-only server: ${plain.stderr}`)
      assert.match(plain.stderr, /TLS/)
      const uri = `nbds://127.0.0.1:${port}/?tls-certificates=${creds.dir}`
      const added = await cli.json(['clone', 'add', 'near', 'r', '--path', uri])
      assert.equal(added.clone.state, 'synchronized')
      assert.ok(cmp(src, farSrc).same, 'synced over TLS')
      await cli.ok(['clone', 'fracture', 'near', 'r'])
      await pwrite(src, 0, Buffer.alloc(MiB, 0x33))
      const r = await cli.json(['restore', 'near', 'r', '--yes'])
      assert.equal(r.completed, true)
      assert.ok(cmp(src, farSrc).same, 'restored over TLS')
      // far's own export is far's source: it cannot be one of far's clones.
      const own = await farCli.run(['clone', 'add', 'far', 'self', '--path', uri])
      assert.equal(own.code, 5, own.stderr)
      assert.match(own.stderr, /is the source of group far under another name/)
    } finally {
      await far.stop('SIGTERM')
    }
  })
})

describe('time-outs are configurable and never hang the CLI', () => {
  test('CLONECTL_NBD_CONNECT_TIMEOUT=1 against a server that accepts and never speaks: clone add fails in about a second with exit status 11 naming the URI', async () => {
    const silent = createServer(() => undefined)
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()))
    const port = (silent.address() as {port: number}).port
    try {
      const src = join(dir, 'to-src.img')
      await randomImage(src, 4 * MiB, 5)
      await cli.ok(['group', 'create', 'to', '--source', src])
      const t0 = Date.now()
      const r = await cli.run(['clone', 'add', 'to', 'r', '--path', `nbd://127.0.0.1:${port}/x`], {env: {CLONECTL_NBD_CONNECT_TIMEOUT: '1'}})
      const took = Date.now() - t0
      assert.equal(r.code, 11, r.stderr)
      assert.ok(r.stderr.includes(`nbd://127.0.0.1:${port}/x`), r.stderr)
      assert.ok(took < 8000, `bounded by the time-out (${took} ms)`)
      assert.equal((await cli.status('to')).clones.length, 0, 'nothing added')
    } finally {
      silent.close()
    }
  })
})

describe('refusals for remote clones', () => {
  before(() => needTool(has('qemu-nbd', '--version') ? false : 'needs qemu-nbd'))
  test('a read-only export, an export smaller than the source, and --create with a URI are refused with exit status 5 or 2, naming the URI', async () => {
    const src = join(dir, 'rf-src.img')
    await randomImage(src, 8 * MiB, 3)
    await cli.ok(['group', 'create', 'rf', '--source', src])
    const ro = join(dir, 'rf-ro.img')
    await fsp.writeFile(ro, '')
    await fsp.truncate(ro, 8 * MiB)
    const sock = join(dir, 'rf-ro.sock')
    const p = spawn('qemu-nbd', ['-f', 'raw', '-t', '-r', '-x', 'c', '-k', sock, ro], {stdio: 'ignore'})
    children.add(p)
    const small = join(dir, 'rf-small.img')
    await fsp.writeFile(small, '')
    await fsp.truncate(small, 4 * MiB)
    const peer = await startPeer('qemu-nbd', small, {unix: join(dir, 'rf-small.sock')})
    try {
      for (let i = 0; i < 100 && !(await fsp.stat(sock).catch(() => undefined)); i++) await sleep(25)
      const uri = `nbd+unix:///c?socket=${sock}`
      const r1 = await cli.run(['clone', 'add', 'rf', 'a', '--path', uri])
      assert.equal(r1.code, 5, r1.stderr)
      assert.match(r1.stderr, /read-only/)
      assert.ok(r1.stderr.includes(uri))
      const r2 = await cli.run(['clone', 'add', 'rf', 'b', '--path', peer.uri])
      assert.equal(r2.code, 5, r2.stderr)
      assert.match(r2.stderr, /smaller than the source/)
      const r3 = await cli.run(['clone', 'add', 'rf', 'c', '--path', peer.uri, '--create'])
      assert.equal(r3.code, 2, r3.stderr)
      assert.match(r3.stderr, /--create makes a local sparse image/)
      assert.equal((await cli.status('rf')).clones.length, 0)
    } finally {
      p.kill('SIGKILL')
      children.delete(p)
      await peer.kill()
    }
  })
})

