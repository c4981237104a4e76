BlockwiseResult=None
def blockwise_mutex_watershed(*a,**k): raise NotImplementedError
