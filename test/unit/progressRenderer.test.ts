/**
 * Progress never shows a negative rate (issue 14): under host writes the work left can grow
 * while copying, so the bytes done may go back between two updates.
 */
import assert from 'node:assert/strict'
import {afterEach, describe, mock, test} from 'node:test'
import type {ProgressEvent} from '../../src/group/GroupOperations.js'
import {ProgressRenderer} from '../../src/ui/ProgressRenderer.js'

const MB = 1e6

function renderer(): {r: ProgressRenderer; lines: string[]} {
  // Plain lines (no terminal), one per update.
  process.env.NO_COLOR = '1'
  const lines: string[] = []
  const out = {write: (s: string) => lines.push(s)} as unknown as NodeJS.WriteStream
  return {r: new ProgressRenderer(0, out), lines}
}

const event = (doneBytes: number): ProgressEvent => ({operation: 'sync', group: 'g', clone: 'k', totalBytes: 100 * MB, doneBytes, remainingExtents: 1})

describe('progress rate', () => {
  afterEach(() => mock.timers.reset())

  test('given 10 MB done, when the count goes back to 4 MB a second later (work appeared), then no negative rate is shown, and the rate resumes from there', () => {
    mock.timers.enable({apis: ['Date'], now: 1_000_000})
    const {r, lines} = renderer()
    r.update(event(10 * MB))
    mock.timers.tick(1000)
    r.update(event(4 * MB))
    mock.timers.tick(1000)
    r.update(event(6 * MB))
    assert.equal(lines.length, 3)
    for (const l of lines) assert.doesNotMatch(l, /-\d/, `a negative number in: ${l}`)
    assert.doesNotMatch(lines[1], /MB\/s/, 'a rate from one sample')
    assert.match(lines[2], / 2\.0 MB\/s/)
  })

  test('given a count that stands still, then the rate is 0 and the ETA unknown', () => {
    mock.timers.enable({apis: ['Date'], now: 1_000_000})
    const {r, lines} = renderer()
    r.update(event(10 * MB))
    mock.timers.tick(1000)
    r.update(event(10 * MB))
    assert.match(lines[1], / 0\.0 MB\/s {2}ETA \?/)
  })
})

describe('plain progress in a log (issue 18.7)', () => {
  afterEach(() => mock.timers.reset())

  function logRenderer(): {r: ProgressRenderer; lines: string[]} {
    process.env.NO_COLOR = '1'
    const lines: string[] = []
    const out = {write: (s: string) => lines.push(s)} as unknown as NodeJS.WriteStream
    return {r: new ProgressRenderer(5000, out), lines}
  }

  test('given a job done within a second, then it prints no progress line at all (not a lone "26.0%")', () => {
    mock.timers.enable({apis: ['Date'], now: 1_000_000})
    const {r, lines} = logRenderer()
    r.update(event(26 * MB))
    mock.timers.tick(400)
    r.update(event(100 * MB))
    r.done()
    assert.deepEqual(lines, [])
  })

  test('given a longer job, then the log ends with its final 100.0% line, printed once', () => {
    mock.timers.enable({apis: ['Date'], now: 1_000_000})
    const {r, lines} = logRenderer()
    r.update(event(10 * MB))
    mock.timers.tick(1500)
    r.update(event(26 * MB))
    mock.timers.tick(1500)
    r.update(event(100 * MB))
    r.done()
    r.done()
    assert.equal(lines.length, 2, lines.join(''))
    assert.match(lines[0]!, /sync g\/k: 26\.0% /)
    assert.match(lines[1]!, /sync g\/k: 100\.0% /)
  })
})
