// Opens a data channel between two RTCPeerConnections in one headless Chromium page, with
// iceTransportPolicy "relay", so every byte must pass through the TURN server.
//
//   node relay.mjs '<RTCIceServer JSON>' <messages>
//
// Prints one JSON line: { ok, relayCandidates: {a, b}, received, error }.
// With <messages> = 0 it only gathers candidates (to check that a bad credential yields none).
import { chromium } from 'playwright-core';

const [iceServerJson, messagesArg] = process.argv.slice(2);
const iceServer = JSON.parse(iceServerJson);
const messages = Number(messagesArg ?? 10);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    '--ignore-certificate-errors',
  ],
});
try {
  const page = await browser.newPage();
  const result = await page.evaluate(async ({ iceServer, messages }) => {
    const config = { iceServers: [iceServer], iceTransportPolicy: 'relay' };
    const a = new RTCPeerConnection(config);
    const b = new RTCPeerConnection(config);
    const relayCandidates = { a: [], b: [] };
    const gathered = (pc, name, other) => new Promise((resolve) => {
      pc.onicecandidate = (e) => {
        if (!e.candidate) return resolve();
        if (e.candidate.candidate.includes(' typ relay')) relayCandidates[name].push(e.candidate.candidate);
        other.addIceCandidate(e.candidate).catch(() => {});
      };
      pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') resolve(); };
    });
    const gatherA = gathered(a, 'a', b);
    const gatherB = gathered(b, 'b', a);
    const channel = a.createDataChannel('turnd');
    const received = [];
    const allReceived = new Promise((resolve) => {
      b.ondatachannel = (e) => {
        e.channel.onmessage = (m) => {
          received.push(m.data);
          e.channel.send('echo:' + m.data);
        };
      };
      let echoes = 0;
      channel.onmessage = () => { if (++echoes === messages) resolve(); };
    });
    await a.setLocalDescription(await a.createOffer());
    await b.setRemoteDescription(a.localDescription);
    await b.setLocalDescription(await b.createAnswer());
    await a.setRemoteDescription(b.localDescription);
    const timeout = (ms) => new Promise((r) => setTimeout(() => r('timeout'), ms));
    await Promise.race([Promise.all([gatherA, gatherB]), timeout(15000)]);
    if (messages === 0) {
      a.close(); b.close();
      return { ok: true, relayCandidates, received };
    }
    const opened = await Promise.race([
      new Promise((r) => { channel.onopen = () => r('open'); if (channel.readyState === 'open') r('open'); }),
      timeout(20000),
    ]);
    if (opened !== 'open') {
      return { ok: false, relayCandidates, received, error: 'data channel did not open: ' + a.iceConnectionState };
    }
    for (let i = 0; i < messages; i++) channel.send('message ' + i);
    const done = await Promise.race([allReceived.then(() => 'done'), timeout(20000)]);
    // The pair the transport selected, and its local candidate.
    let pair = null;
    const stats = await a.getStats();
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) {
        const selected = stats.get(s.selectedCandidatePairId);
        const local = selected && stats.get(selected.localCandidateId);
        pair = { localType: local?.candidateType, relayProtocol: local?.relayProtocol, address: local?.address, port: local?.port };
      }
    });
    a.close(); b.close();
    return { ok: done === 'done', relayCandidates, received, pair, error: done === 'done' ? undefined : 'echoes missing' };
  }, { iceServer, messages });
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
