import assert from 'node:assert/strict'
import {execFileSync, spawnSync} from 'node:child_process'
import {mkdtempSync, rmSync, writeFileSync} from 'node:fs'
import {randomBytes} from 'node:crypto'
import {tmpdir} from 'node:os'
import {join} from 'node:path'
import {test} from 'node:test'
import {fileURLToPath} from 'node:url'
import {needTool} from '../helpers/serve.js'

const bin = join(fileURLToPath(import.meta.url), '..', '..', '..', '..', 'bin', 'run.js')
const hasTmux = spawnSync('sh', ['-c', 'command -v tmux']).status === 0

function scratch(): {dir: string; env: NodeJS.ProcessEnv; run: (...args: string[]) => ReturnType<typeof spawnSync>} {
  const dir = mkdtempSync(join(tmpdir(), 'clonectl-term-'))
  writeFileSync(join(dir, 'src.img'), randomBytes(32 * 1024 * 1024))
  const env: NodeJS.ProcessEnv = {...process.env, CLONECTL_STATE_DIR: join(dir, 'state')}
  delete env.NO_COLOR
  const run = (...args: string[]): ReturnType<typeof spawnSync> => spawnSync('node', [bin, ...args], {env, encoding: 'utf8'})
  assert.equal(run('group', 'create', 'g', '--source', join(dir, 'src.img')).status, 0)
  assert.equal(run('clone', 'add', 'g', 'c', '--path', join(dir, 'c.img'), '--create', '--no-sync').status, 0)
  return {dir, env, run}
}

test('a sync piped to a file prints plain progress lines with no escape codes', () => {
  const {dir, run} = scratch()
  try {
    const r = run('clone', 'sync', 'g', 'c', '--rate', '8M')
    assert.equal(r.status, 0, String(r.stderr))
    const err = String(r.stderr)
    assert.match(err, /sync g\/c: \d+\.\d% /)
    assert.ok(!err.includes('\u001B'), 'escape codes in non-TTY output')
    assert.ok(!String(r.stdout).includes('\u001B'))
  } finally {
    rmSync(dir, {recursive: true, force: true})
  }
})

test('a long sync in a real terminal (tmux) shows a live progress bar', async () => {
  needTool(hasTmux ? false : 'tmux')
  const {dir, env} = scratch()
  const session = `clonectl-${process.pid}`
  try {
    const cmd = `CLONECTL_STATE_DIR=${join(dir, 'state')} node ${bin} clone sync g c --rate 8M; echo EXIT=$?; sleep 30`
    execFileSync('tmux', ['new-session', '-d', '-s', session, '-x', '150', '-y', '20', cmd], {env})
    let screen = ''
    let sawBar = false
    for (let i = 0; i < 60 && !/EXIT=/.test(screen); i++) {
      await new Promise((r) => setTimeout(r, 200))
      screen = execFileSync('tmux', ['capture-pane', '-p', '-t', session], {encoding: 'utf8'})
      if (/sync g\/c [█░]+ +\d+\.\d%/.test(screen)) sawBar = true
    }
    assert.ok(sawBar, `no live bar seen; last screen:\n${screen}`)
    assert.match(screen, /EXIT=0/)
    assert.match(screen, /Synchronized clone c/)
  } finally {
    spawnSync('tmux', ['kill-session', '-t', session])
    rmSync(dir, {recursive: true, force: true})
  }
})
