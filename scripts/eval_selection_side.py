"""Which cells should ``transform="auto"`` hold out? An exploration (2026-12-01), not a default.

    python scripts/eval_selection_side.py {train|heldout|all} [OUT.json]

``transform="auto"`` fits each candidate to 80 % of the *fixed* cells and scores the held-out fixed
cells' matching cost. When the moving set has fewer cells (cells missing from it), many fixed
cells have no partner, and a flexible model that covers them wins the score while naming fewer
cells right (``scripts/eval_missing_cells.py``). The alternative explored: hold out 20 % of the
*moving* cells instead (fit the candidate to the other 80 %, carry its transforms to all moving
cells, match them one-to-one to all fixed cells, score the held-out moving cells' mean cost).
Rules compared, each on the 28 embryo pairs (one orientation search) complete and with 20 % of one
side's cells removed (the draws of ``scripts/eval_missing_cells.py``): ``fixed_ho`` (the
default), ``moving_ho``, ``smaller`` (hold out from the smaller set; the fixed set when equal),
``both`` (the sum of both scores relative to rigid's). Accuracy of the chosen candidate's fit on
all cells (same matching as ``register_cells``).
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _jsonout import prealigned_embryo_pairs
from xmodal.pipelines._auto_steps import AUTO_CANDIDATES, candidate_label
from xmodal.pipelines._register_steps import fit_step
from xmodal.pipelines.prealign import median_nn_distance, rms_radius
from xmodal.registration.selection import heldout_split
from xmodal.matching import match_points
which = sys.argv[1] if len(sys.argv)>1 else 'train'
out_path = sys.argv[2] if len(sys.argv)>2 else f'eval_selection_side_{which}.json'
def opts(c,R):
    kind,bf,lam=c
    return None if kind!='deformable' else {'beta':bf*R,'lam':lam/R**2}
def apply(transforms, pts):
    for t in transforms: pts=t.apply(pts)
    return np.asarray(pts,np.float64)
rows=[]
for i,(fa,fb,split,start) in enumerate(prealigned_embryo_pairs(4)):
    if which!='all' and split!=which: continue
    rng=np.random.default_rng(i)
    conds=[('complete',np.arange(len(fa.points)),np.arange(len(fb.points)))]
    for side,n in (("moving",len(fb.points)),("fixed",len(fa.points))):
        keep=np.sort(rng.choice(n,int(round(0.8*n)),replace=False))
        conds.append((side, keep if side=='fixed' else np.arange(len(fa.points)), keep if side=='moving' else np.arange(len(fb.points))))
    for name,kf,km in conds:
        fix=fa.points[kf]; mov=start[km]; fc,mc=fa.cells[kf],fb.cells[km]; shared=len(set(fc)&set(mc))
        nn=median_nn_distance(fix); R=rms_radius(fix); unm=3*nn
        acc={}; score_f={}; score_m={}
        for c in AUTO_CANDIDATES:
            f=fit_step(mov,fix,transform=c[0],scale=False,cpd_options=None,deformable_options=opts(c,R),nn=nn,radius=R)
            m=match_points(f.moved,fix,k=30,unmatched_cost=unm)
            acc[candidate_label(c)]=float(np.sum(fc[m.cols]==mc[m.rows]))/shared
            sm=[];sf=[]
            for r in range(3):
                # moving held out
                hm=heldout_split(len(mov),0.2,r)
                g=fit_step(mov[~hm],fix,transform=c[0],scale=False,cpd_options=None,deformable_options=opts(c,R),nn=nn,radius=R)
                allm=apply(g.transforms,mov)
                mm=match_points(allm,fix,k=30,unmatched_cost=unm)
                cost=np.full(len(mov),unm); rows_=np.asarray(mm.rows); cols_=np.asarray(mm.cols)
                cost[rows_]=np.linalg.norm(allm[rows_]-fix[cols_],axis=1); sm.append(cost[hm].mean())
                # fixed held out (current)
                hf=heldout_split(len(fix),0.2,r)
                g=fit_step(mov,fix[~hf],transform=c[0],scale=False,cpd_options=None,deformable_options=opts(c,R),nn=nn,radius=R)
                mm=match_points(g.moved,fix,k=30,unmatched_cost=unm)
                cost=np.full(len(fix),unm); rows_=np.asarray(mm.rows); cols_=np.asarray(mm.cols)
                cost[cols_]=np.linalg.norm(g.moved[rows_]-fix[cols_],axis=1); sf.append(cost[hf].mean())
            score_m[candidate_label(c)]=float(np.mean(sm)); score_f[candidate_label(c)]=float(np.mean(sf))
        bf=min(score_f,key=score_f.get); bm=min(score_m,key=score_m.get)
        smaller = bm if len(mov)<len(fix) else bf
        both = min(score_f, key=lambda k: score_f[k]/score_f['rigid']+score_m[k]/score_m['rigid'])
        row=dict(i=i,split=split,cond=name,nf=len(fix),nm=len(mov),rigid=acc['rigid'],fixed_ho=acc[bf],moving_ho=acc[bm],smaller=acc[smaller],both=acc[both],chosen=[bf,bm,both],acc=acc)
        rows.append(row); print({k:(round(v,3) if isinstance(v,float) else v) for k,v in row.items() if k!='acc'},flush=True)
for cond in ('complete','moving','fixed'):
    sel=[r for r in rows if r['cond']==cond]
    print(cond,{k:(round(float(np.mean([r[k] for r in sel])),3), round(float(min(r[k]-r['rigid'] for r in sel)),3)) for k in ('rigid','fixed_ho','moving_ho','smaller','both')})
json.dump(rows,open(out_path,'w'),indent=1)
